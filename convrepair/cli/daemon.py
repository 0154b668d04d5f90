"""`convrepair daemon` and `convrepair status`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from convrepair.cli.app import app
from convrepair.cli.common import JsonOption, emit_json, human


class ExecutorKind(str, Enum):
    """Where the daemon runs its jobs (convrepair.daemon.executors)."""

    local = "local"
    ray = "ray"


@app.command()
def daemon(
    registry: Annotated[str, typer.Argument(metavar="REGISTRY", help="Registry location: for the directory registry, MODEL/VERSION/model.EXT (Triton layout); for --registry-kind mlflow, the tracking URI.")],
    registry_kind: Annotated[str, typer.Option(help="Registry plugin (see `convrepair plugins`).")] = "directory",
    state_dir: Annotated[Path, typer.Option(help="Where the job queue lives (local disk: SQLite WAL).")] = Path(".convrepair-state"),
    once: Annotated[bool, typer.Option("--once", help="Process everything pending, then exit (cron, CI).")] = False,
    workers: Annotated[int, typer.Option(help="Jobs at a time, each in its own process.")] = 1,
    quiet_seconds: Annotated[float, typer.Option(help="A version without _COMPLETE is ready after this long unchanged.")] = 5.0,
    poll: Annotated[bool, typer.Option("--poll", help="Polling observer (network filesystems give no inotify events).")] = False,
    job_timeout: Annotated[float, typer.Option(help="Wall-clock limit of one job, seconds.")] = 900.0,
    memory_mb: Annotated[int, typer.Option(help="Address-space limit of one job's process, MB (0: none).")] = 8192,
    sign_key: Annotated[Optional[Path], typer.Option(help="Service key that signs each job's repair log.")] = None,
    http_port: Annotated[int, typer.Option(help="Port of /healthz and /metrics.")] = 9464,
    http_host: Annotated[str, typer.Option(help="Address they listen on (0.0.0.0 inside a container).")] = "127.0.0.1",
    no_http: Annotated[bool, typer.Option("--no-http", help="No HTTP endpoint.")] = False,
    log_format: Annotated[str, typer.Option(help="Log lines as plain text (key=value) or JSON (one object a line): text | json.")] = "text",
    lease_seconds: Annotated[float, typer.Option(help="Lease of a running job, renewed while it runs; a job whose lease ran out (its daemon died) is run again.")] = 30.0,
    executor: Annotated[ExecutorKind, typer.Option(metavar="{local,ray}", case_sensitive=False,
                                                   help="Where jobs run: worker processes on this machine, or tasks on a Ray cluster (pip install 'convrepair[ray]').")] = ExecutorKind.local,
    ray_address: Annotated[Optional[str], typer.Option(metavar="HOST:PORT", help="Ray cluster to join (host:port of `ray start --head`; default: $RAY_ADDRESS, else one `ray start` made on this machine, else a private one).")] = None,
    parse_grace_seconds: Annotated[Optional[float], typer.Option(help="How long an unchanged version that does not parse as a whole model is waited for before its job fails (default: 10 quiet periods).")] = None,
    json_out: Annotated[Optional[str], typer.Option("--json", metavar="PATH", help="With --once: the queue's jobs afterwards as JSON to PATH ('-': stdout; the log stays on stderr).")] = None,
    allow_read: Annotated[Optional[list[Path]], typer.Option("--allow-read", metavar="DIR", help="A folder (repeatable) whose files a model's convrepair.toml may name besides the model's own folder; nothing else is readable by a job.")] = None,
    backoff_seconds: Annotated[float, typer.Option(help="A job that met a registry outage waits this long before it runs again (no attempt spent), doubling while the outage lasts.")] = 10.0,
    max_backoff_seconds: Annotated[float, typer.Option(help="The longest such wait.")] = 300.0,
) -> None:
    """Watch REGISTRY and run convert → check → repair → sign for every new model version."""
    import signal

    if json_out is not None and not once:
        raise typer.BadParameter("--json needs --once (a running daemon reports through its log and /metrics)")
    from convrepair.daemon import logs
    from convrepair.daemon.service import Daemon, DaemonConfig

    logs.configure(log_format)
    if registry_kind == "directory" and not Path(registry).is_dir():
        raise typer.BadParameter(f"{registry}: registry directory does not exist")
    if sign_key is not None:
        from convrepair.ledger.keys import load_private_key

        load_private_key(sign_key)
    config = DaemonConfig(registry=Path(registry).resolve() if registry_kind == "directory" else registry, state_dir=state_dir, once=once, workers=workers,
                          quiet_seconds=quiet_seconds, job_timeout=job_timeout, memory_mb=memory_mb,
                          sign_key=sign_key.resolve() if sign_key else None, poll=poll, registry_kind=registry_kind,
                          http_port=None if no_http else http_port, http_host=http_host,
                          lease_seconds=lease_seconds, parse_grace_seconds=parse_grace_seconds,
                          executor=executor.value, ray_address=ray_address, backoff_seconds=backoff_seconds,
                          max_backoff_seconds=max_backoff_seconds, allow_read=tuple(p.resolve() for p in allow_read or ()))
    service = Daemon(config)
    signal.signal(signal.SIGTERM, service.stop)
    signal.signal(signal.SIGINT, service.stop)
    code = service.run()
    if json_out is not None:
        emit_json(json_out, _jobs(state_dir))
    raise typer.Exit(code)


def _jobs(state_dir: Path) -> list[dict]:
    """Every job of the queue as a dict (what `status --json` prints); `result` as an object."""
    import json
    from dataclasses import asdict

    from convrepair.daemon.queue import JobQueue

    queue = JobQueue(state_dir / "queue.sqlite")
    try:
        jobs = [asdict(job) for job in queue.jobs()]
    finally:
        queue.close()
    for job in jobs:
        if isinstance(job["result"], str):
            try:
                job["result"] = json.loads(job["result"])
            except ValueError:
                pass  # kept as written
    return jobs


@app.command()
def status(
    state_dir: Annotated[Path, typer.Option(help="The daemon's state directory.")] = Path(".convrepair-state"),
    json_out: JsonOption = None,
) -> None:
    """The daemon's job queue."""
    from convrepair.report.terminal import render_status

    if not (state_dir / "queue.sqlite").exists():
        raise typer.BadParameter(f"{state_dir}: no queue here (has the daemon run with this --state-dir?)")
    jobs = _jobs(state_dir)
    emit_json(json_out, jobs)
    if human(json_out):
        render_status(jobs)
