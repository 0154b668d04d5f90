"""The command line: one thin function per command; the work happens in the engine modules.

Exit status: 0 ok / equivalent, 1 discrepancy or failed conversion/verification, 2 usage or bad input.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from convrepair.errors import EXIT_BAD_INPUT, ConvrepairError

app = typer.Typer(
    name="convrepair",
    help="Convert models between frameworks, prove the conversion on real data, localize and repair faults.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # rich tracebacks would print locals, key material included
    add_completion=False,
)

_state = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


def _parse_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--option expects KEY=VALUE, got {pair!r}")
        options[key.strip()] = value.strip()
    return options


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="Model to convert (.keras, SavedModel dir, .pt2, .pt, .onnx).")],
    to: Annotated[list[str], typer.Option("--to", help="Target: onnx, torch, onnx-fp16, onnx-int8, tflite, tflite-int8. Repeat for several.")],
    out: Annotated[Optional[Path], typer.Option(help="Output path (only with a single --to).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option(help="Directory for outputs named after the source (default: beside it).")] = None,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset for exporters that write ONNX.")] = None,
    option: Annotated[list[str], typer.Option("--option", "-O", help="Converter option KEY=VALUE (repeatable).")] = [],  # noqa: B006
    calibration: Annotated[Optional[Path], typer.Option(help=".npz of inputs for static int8 calibration.")] = None,
    data: Annotated[Optional[Path], typer.Option(help=".npz (x, optional y) to validate each output against the source.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the conversion results as JSON.")] = None,
) -> None:
    """Convert SOURCE to one or more targets; multi-hop routes are found automatically."""
    from convrepair import convert as engine
    from convrepair.fsutil import write_json_atomic
    from convrepair.plugins import default_registry
    from convrepair.report.terminal import render_conversions

    if out is not None and len(to) != 1:
        raise typer.BadParameter("--out needs exactly one --to")
    options = _parse_options(option)
    if opset is not None:
        options["opset"] = str(opset)
    registry = default_registry()
    calib = engine.load_calibration(calibration) if calibration else None
    results = [engine.convert(registry, source, target, out, options, calib, out_dir=out_dir) for target in to]
    checks = [engine.validate(registry, result, data) for result in results] if data else None
    render_conversions(results, checks)
    if json_out:
        payload = [r.to_json() | ({"validation": c.to_json()} if checks else {}) for r, c in zip(results, checks or [None] * len(results))]
        write_json_atomic(json_out, {"schema": "convrepair.convert/v1", "conversions": payload})
    failed = checks is not None and any(not c.agrees for c in checks)
    raise typer.Exit(1 if failed else 0)


# the lens options `check` and `repair` share
LensesOption = Annotated[Optional[str], typer.Option(
    "--lenses", help="Reliability lenses: calibration,uncertainty,robustness,occlusion, or all (default: none).")]
EpsilonsOption = Annotated[Optional[str], typer.Option(
    "--epsilons", help="Robustness lens: L∞ ε as shares of the input range (default 0.02,0.05,0.1).")]
PgdStepsOption = Annotated[Optional[int], typer.Option("--pgd-steps", help="Robustness lens: PGD steps (default 10).")]
PgdStepOption = Annotated[Optional[float], typer.Option(
    "--pgd-step", help="Robustness lens: PGD step as a multiple of ε (default 2.5 / steps).")]


@app.command()
def check(
    source: Annotated[Path, typer.Argument(help="The source model (the reference behaviour).")],
    target: Annotated[Path, typer.Argument(help="The converted model to prove.")],
    data: Annotated[Optional[Path], typer.Option(help=".npz with x (source layout) and optional y; default: uniform inputs.")] = None,
    rounds: Annotated[int, typer.Option(help="Sampling rounds.")] = 5,
    samples: Annotated[int, typer.Option(help="Distinct samples per round.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the sampling rounds.")] = 0,
    atol: Annotated[Optional[float], typer.Option(help="Absolute tolerance (default by the target's precision).")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Relative tolerance.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="k of the top-k agreement.")] = 1,
    localize: Annotated[Optional[bool], typer.Option("--localize/--no-localize", help="Layer-wise localization (default: when discrepant).")] = None,
    lenses: LensesOption = None,
    epsilons: EpsilonsOption = None,
    pgd_steps: PgdStepsOption = None,
    pgd_step: PgdStepOption = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the report (convrepair.check/v1).")] = None,
) -> None:
    """Compare SOURCE and TARGET on sampled rounds of data; localize and type the fault when they differ.

    Exit 0 equivalent, 1 discrepant, 2 bad input.
    """
    from convrepair.check import CheckConfig, run_check
    from convrepair.fsutil import write_json_atomic
    from convrepair.plugins import default_registry
    from convrepair.report.terminal import render_check, round_progress

    from convrepair.lenses import lens_config

    config = CheckConfig(data, rounds, samples, seed, atol, rtol, top_k, localize,
                         lenses=lens_config(lenses, seed, epsilons, pgd_steps, pgd_step))
    with round_progress(rounds) as advance:
        report = run_check(default_registry(), source, target, config, on_round=advance)
    payload = report.to_json()
    if json_out:
        write_json_atomic(json_out, payload)
    render_check(payload)
    raise typer.Exit(1 if report.discrepant else 0)


@app.command()
def repair(
    source: Annotated[Path, typer.Argument(help="The source model (reference behaviour), or the MODEL to repair against its labels.")],
    target: Annotated[Optional[Path], typer.Argument(help="The converted model to repair (omit to repair MODEL itself).")] = None,
    out: Annotated[Path, typer.Option(help="Where to write the repaired model (target's format, with a sidecar).")] = Path(),
    previous: Annotated[Optional[Path], typer.Option(help="Version N-1 of MODEL: repair the regressions against it.")] = None,
    data: Annotated[Optional[Path], typer.Option(help=".npz with x (source layout) and optional y.")] = None,
    strategy: Annotated[str, typer.Option(help="auto | restore | pso")] = "auto",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    budget_seconds: Annotated[float, typer.Option(help="Wall-clock budget for the search.")] = 300.0,
    seed: Annotated[int, typer.Option(help="Seed of the data split and the search.")] = 0,
    atol: Annotated[Optional[float], typer.Option(help="Absolute tolerance the repair must meet (default: check's).")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Relative tolerance the repair must meet.")] = None,
    optimiser: Annotated[str, typer.Option(help="Patch search: pso (Arachne v1) or de (Arachne TOSEM).")] = "pso",
    accept_improvement: Annotated[bool, typer.Option(help="Accept fewer held-out flips (break rate <= 1%) short of equivalence.")] = False,
    prefer: Annotated[str, typer.Option(help="When a precision fallback and a PSO patch both work: auto | fast (the patch) | exact (the fallback).")] = "auto",
    lenses: LensesOption = None,
    epsilons: EpsilonsOption = None,
    pgd_steps: PgdStepsOption = None,
    pgd_step: PgdStepOption = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the report (convrepair.repair/v1).")] = None,
    sign_key: Annotated[Optional[Path], typer.Option(help="Service key: write a signed repair log (pending approval).")] = None,
    log: Annotated[Optional[Path], typer.Option(help="Where the signed log goes (default: OUT.log.dsse.json).")] = None,
) -> None:
    """Repair TARGET so that it behaves like SOURCE; or, with one model, repair its regressions
    against --previous or its misclassifications; prove it on held-out samples.

    Exit 0 repaired (or nothing to repair), 1 no acceptable repair (nothing written), 2 bad input.
    """
    from convrepair.fsutil import write_json_atomic
    from convrepair.lenses import lens_config
    from convrepair.plugins import default_registry
    from convrepair.repair import RepairConfig, run_repair
    from convrepair.report.terminal import render_repair

    if out == Path():
        raise typer.BadParameter("--out is required")
    from convrepair.ledger.keys import load_private_key
    from convrepair.ledger.log import now

    if sign_key is not None:
        load_private_key(sign_key)  # a bad key fails before any work
    started = now()

    def sign(payload: dict) -> None:
        if sign_key is None:
            return
        from convrepair.ledger.log import write_signed_log

        path = write_signed_log(payload, log or out.with_name(out.name + ".log.dsse.json"), sign_key, started)
        typer.echo(f"signed log (pending approval): {path}")
    config = RepairConfig(data=data, strategy=strategy, device=device, budget_seconds=budget_seconds, seed=seed,
                          atol=atol, rtol=rtol, optimiser=optimiser, accept_improvement=accept_improvement,
                          prefer=prefer, lenses=lens_config(lenses, seed, epsilons, pgd_steps, pgd_step))
    if target is None:
        from convrepair.repair.model_repair import run_model_repair
        from convrepair.report.terminal import render_model_repair

        result = run_model_repair(default_registry(), source, previous, out, config)
        if json_out:
            write_json_atomic(json_out, result)
        render_model_repair(result)
        sign(result)
        raise typer.Exit(0 if result["verdict"] == "repaired" else 1)
    if previous is not None:
        raise typer.BadParameter("--previous repairs one MODEL; give it without a TARGET")
    report = run_repair(default_registry(), source, target, out, config)
    payload = report.to_json()
    if json_out:
        write_json_atomic(json_out, payload)
    render_repair(payload)
    sign(payload)
    raise typer.Exit(0 if report.succeeded else 1)


keys_app = typer.Typer(help="Signing keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("init")
def keys_init(
    name: Annotated[str, typer.Option(help="Key name: NAME.key (private, 0600) and NAME.pub.")] = "convrepair",
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the key pair.")] = Path("."),
    trust: Annotated[Optional[Path], typer.Option(help="Also add the public key to this trust file …")] = None,
    role: Annotated[str, typer.Option(help="… with this role: service or reviewer.")] = "service",
) -> None:
    """Create an Ed25519 key pair; never overwrites. The private key is never printed."""
    from convrepair.ledger.keys import add_to_trust, init_keys, load_public_key

    private, public, keyid = init_keys(name, directory)
    if trust is not None:
        add_to_trust(trust, load_public_key(public), role, name)
    typer.echo(f"key {name}: {keyid}\n  private: {private} (mode 600)\n  public:  {public}")


@app.command()
def approve(
    log_file: Annotated[Path, typer.Argument(metavar="LOG", help="The signed repair log.")],
    key: Annotated[Path, typer.Option(help="Reviewer's private key (not the key that signed the log).")],
    comment: Annotated[str, typer.Option(help="Why it is approved.")] = "",
    promote: Annotated[Optional[Path], typer.Option(help="Copy the approved artifact, its log and the approval here.")] = None,
) -> None:
    """Approve a repair log with a reviewer key (a second signed statement)."""
    from convrepair.ledger.decisions import decide

    record = decide(log_file, key, "approved", comment, promote)
    typer.echo(f"approved: {record.path}" + (f"\npromoted to {promote}" if promote else ""))


@app.command()
def reject(
    log_file: Annotated[Path, typer.Argument(metavar="LOG", help="The signed repair log.")],
    key: Annotated[Path, typer.Option(help="Reviewer's private key.")],
    reason: Annotated[str, typer.Option(help="Why it is rejected.")],
) -> None:
    """Reject a repair log with a reviewer key."""
    from convrepair.ledger.decisions import decide

    record = decide(log_file, key, "rejected", reason)
    typer.echo(f"rejected: {record.path}")


@app.command()
def verify(
    log_file: Annotated[Path, typer.Argument(metavar="LOG", help="The signed repair log.")],
    trust: Annotated[Path, typer.Option(help="Trust file naming the allowed keys and their roles.")],
    require_approval: Annotated[bool, typer.Option(help="Fail unless a trusted reviewer approved this exact log.")] = False,
    chain: Annotated[bool, typer.Option(help="Also check the whole decision hash chain.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
) -> None:
    """Recompute every digest and check every signature; exit 0 only when all holds (fails closed)."""
    import json

    from convrepair.ledger.keys import read_trust
    from convrepair.ledger.verify import verify as run_verify

    result = run_verify(log_file, read_trust(trust), require_approval, chain)
    if json_out:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        typer.echo(("verified: " if result.ok else "VERIFICATION FAILED: ") + f"{log_file}: {result.reason}")
    raise typer.Exit(0 if result.ok else 1)


@app.command()
def review(
    registry: Annotated[Path, typer.Option(help="Directory to search for signed logs.")] = Path("."),
    status: Annotated[str, typer.Option(help="pending | approved | rejected | all")] = "pending",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List repair logs and their review status."""
    import json

    from convrepair.ledger.review import list_logs
    from convrepair.report.terminal import render_review

    if status not in ("pending", "approved", "rejected", "all"):
        raise typer.BadParameter("--status is pending, approved, rejected or all")
    rows = [row for row in list_logs(registry) if status == "all" or row["status"] == status]
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
    else:
        render_review(rows, status)


@app.command()
def show(
    log_file: Annotated[Path, typer.Argument(metavar="LOG", help="The signed repair log.")],
    html: Annotated[Optional[Path], typer.Option(help="Also write a self-contained HTML page.")] = None,
) -> None:
    """What changed, where and why, with the numbers before and after."""
    from convrepair.ledger.dsse import read_envelope, statement_of
    from convrepair.report.terminal import render_log

    envelope, _ = read_envelope(log_file)
    statement = statement_of(envelope, log_file)
    render_log(statement, envelope)
    if html is not None:
        from convrepair.fsutil import atomic_output
        from convrepair.report.html import log_page

        with atomic_output(html) as tmp:
            tmp.write_text(log_page(statement, envelope))
        typer.echo(f"wrote {html}")


@app.command()
def daemon(
    registry: Annotated[Path, typer.Argument(help="Registry location: for the directory registry, MODEL/VERSION/model.EXT (Triton layout).")],
    registry_kind: Annotated[str, typer.Option(help="Registry plugin (see `convrepair plugins`).")] = "directory",
    state_dir: Annotated[Path, typer.Option(help="Where the job queue lives (local disk: SQLite WAL).")] = Path(".convrepair-state"),
    once: Annotated[bool, typer.Option(help="Process everything pending, then exit (cron, CI).")] = False,
    workers: Annotated[int, typer.Option(help="Jobs at a time, each in its own process.")] = 1,
    quiet_seconds: Annotated[float, typer.Option(help="A version without _COMPLETE is ready after this long unchanged.")] = 5.0,
    poll: Annotated[bool, typer.Option(help="Polling observer (network filesystems give no inotify events).")] = False,
    job_timeout: Annotated[float, typer.Option(help="Wall-clock limit of one job, seconds.")] = 900.0,
    memory_mb: Annotated[int, typer.Option(help="Address-space limit of one job's process, MB (0: none).")] = 8192,
    sign_key: Annotated[Optional[Path], typer.Option(help="Service key that signs each job's repair log.")] = None,
    http_port: Annotated[int, typer.Option(help="Port of /healthz and /metrics.")] = 9464,
    http_host: Annotated[str, typer.Option(help="Address they listen on (0.0.0.0 inside a container).")] = "127.0.0.1",
    no_http: Annotated[bool, typer.Option("--no-http", help="No HTTP endpoint.")] = False,
    log_format: Annotated[str, typer.Option(help="text | json")] = "text",
) -> None:
    """Watch REGISTRY and run convert → check → repair → sign for every new model version."""
    import logging
    import signal

    from convrepair.daemon.service import Daemon, DaemonConfig

    logging.basicConfig(level=logging.INFO, format="%(message)s" if log_format == "json" else "%(asctime)s %(message)s")
    if registry_kind == "directory" and not registry.is_dir():
        raise typer.BadParameter(f"{registry}: registry directory does not exist")
    if sign_key is not None:
        from convrepair.ledger.keys import load_private_key

        load_private_key(sign_key)
    config = DaemonConfig(registry=registry.resolve(), state_dir=state_dir, once=once, workers=workers,
                          quiet_seconds=quiet_seconds, job_timeout=job_timeout, memory_mb=memory_mb,
                          sign_key=sign_key.resolve() if sign_key else None, poll=poll, registry_kind=registry_kind,
                          http_port=None if no_http else http_port, http_host=http_host)
    service = Daemon(config)
    signal.signal(signal.SIGTERM, service.stop)
    signal.signal(signal.SIGINT, service.stop)
    raise typer.Exit(service.run())


@app.command()
def status(
    state_dir: Annotated[Path, typer.Option(help="The daemon's state directory.")] = Path(".convrepair-state"),
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The daemon's job queue."""
    import json
    from dataclasses import asdict

    from convrepair.daemon.queue import JobQueue
    from convrepair.report.terminal import render_status

    if not (state_dir / "queue.sqlite").exists():
        raise typer.BadParameter(f"{state_dir}: no queue here (has the daemon run with this --state-dir?)")
    queue = JobQueue(state_dir / "queue.sqlite")
    jobs = [asdict(job) for job in queue.jobs()]
    queue.close()
    if json_out:
        typer.echo(json.dumps(jobs, indent=2))
    else:
        render_status(jobs)


@app.command()
def plugins(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    deep: Annotated[bool, typer.Option("--deep/--quick", help="Import each framework to prove it works (slower).")] = True,
) -> None:
    """List plugins, their formats and converters, and why an unavailable one is unavailable."""
    import json

    from convrepair.plugins import default_registry
    from convrepair.report.terminal import plugin_rows, render_plugins

    registry = default_registry()
    if json_out:
        print(json.dumps(plugin_rows(registry, deep), indent=2))
    else:
        render_plugins(registry, deep)


def main() -> None:
    """Entry point: run the app and turn `ConvrepairError`s into one line and an exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        status = app(standalone_mode=False)  # click returns, not raises, a command's Exit code here
        sys.exit(status if isinstance(status, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except ConvrepairError as exc:
        if _state["debug"]:
            raise
        print(f"convrepair: error: {exc.one_line()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (typer.BadParameter, typer.Abort) as exc:
        print(f"convrepair: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except Exception as exc:  # click usage errors (typer vendors click) and the unexpected
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(EXIT_BAD_INPUT)
        if _state["debug"]:
            raise
        print(f"convrepair: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(70)


if __name__ == "__main__":
    main()
