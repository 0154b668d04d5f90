"""Jobs as Ray tasks; the daemon keeps the queue, and writes and signs every result itself.

A leased job becomes one task with the resources it declares (CPUs, memory, a GPU for PSO work
when the cluster has one). The model, its config and data travel in the object store (`ray.put`
of a tar), never as a path on the daemon's disk. On its node the task runs the same worker
process a local job runs (memory limit, process group, dies with its parent) in a scratch folder
and returns the results folder as bytes. The daemon moves it into the registry, renames it into
place and signs it there — so a Ray retry or a dead node can never produce a second signed log.
Tasks are never retried by Ray (`max_retries=0`): a task lost with its worker or node is
reported `Lost`, and the queue hands the job out again when its lease runs out.

`ray.init()` installs its own SIGTERM handler; the daemon's handlers are put back after it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from convrepair.daemon.executors import Dispatched, Lost, Where, bundle, remote
from convrepair.daemon.executors.remote import RemoteStage
from convrepair.daemon.job import scratch_name
from convrepair.daemon.worker import WorkerResult
from convrepair.errors import BadInput, exception_text

GPU_POLICIES = ("pso", "auto")  # the particle-swarm search is the part a GPU speeds up
QUEUE_SLACK = 300.0  # seconds a task may wait for resources and transfer before its timeout counts


def run_on_node(inputs: bytes, spec: dict[str, Any], memory_mb: int, timeout: float) -> dict[str, Any]:
    """The Ray task: unpack the job's files into scratch, run the job in a worker process, return
    its results folder as bytes. It signs nothing and writes nothing outside its scratch."""
    import ray

    from convrepair.daemon import worker

    _remove_stale_scratch()
    scratch = Path(tempfile.mkdtemp(prefix=f"convrepair-ray-{os.getpid()}-"))
    where = {"host": socket.gethostname(), "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    try:
        bundle.unpack(inputs, scratch)
        root = scratch / "fs"
        local = dict(spec, version_dir=str(bundle.mirrored(root, spec["version_dir"])),
                     model_file=str(bundle.mirrored(root, spec["model_file"])), sign_key=None, state_dir=None,
                     allow_read=[str(bundle.mirrored(root, p)) for p in spec.get("allow_read") or []])
        local.pop("scratch", None)
        proc = worker.start(local, memory_mb, threads=max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
        started = time.monotonic()
        while (result := worker.collect(proc, started, timeout)) is None:
            time.sleep(0.2)
        final = Path(local["version_dir"]) / "convrepair" / spec["target"]
        results = bundle.pack_dir(final) if result.ok and final.is_dir() else None
        return {"ok": result.ok and results is not None, "result": result.result, "retry": getattr(result, "retry", False),
                "error": result.error or (None if results is not None else "the job left no results folder"),
                "reason": result.reason, "transient": result.transient,
                "seconds": result.seconds, "results": results, "worker_root": str(root), **where}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _remove_stale_scratch() -> None:
    """Scratch folders of Ray workers that were killed mid-task (their `finally` never ran)."""
    for stale in Path(tempfile.gettempdir()).glob("convrepair-ray-*-*"):
        pid = stale.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None, memory_mb: int, job_timeout: float, num_cpus: float = 1.0):
        try:
            import ray
        except ImportError:
            raise BadInput("the Ray executor needs Ray: pip install 'convrepair[ray]'") from None
        self.ray = ray
        self.memory_mb, self.job_timeout, self.num_cpus = memory_mb, job_timeout, num_cpus
        _reachable(address)
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        # no address: $RAY_ADDRESS, else a cluster `ray start` made on this machine, else a private one
        options = {"address": address, "namespace": "convrepair", "logging_level": logging.WARNING,
                   "log_to_driver": False, "configure_logging": False}
        try:
            ray.init(**options)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError …
            raise BadInput(f"cannot connect to the Ray cluster at {address or '(a new local one)'}: "
                           f"{type(exc).__name__}: {exception_text(exc, 200)}") from None
        finally:
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
        self.gpus = ray.cluster_resources().get("GPU", 0)
        self.task = ray.remote(run_on_node)
        self.stage = RemoteStage()

    def describe(self) -> dict[str, Any]:
        """For the start line: the cluster and the daemon's own node in it."""
        context = self.ray.get_runtime_context()
        return {"executor": self.name, "node": context.get_node_id(), "host": socket.gethostname(),
                "ray_address": getattr(context, "gcs_address", None), "cluster_cpus": self.ray.cluster_resources().get("CPU", 0)}

    def resources(self, spec: dict[str, Any]) -> dict[str, Any]:
        """What one job asks of the cluster."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": 0}
        if self.memory_mb:
            options["memory"] = self.memory_mb * 1024 * 1024
        if self.gpus >= 1 and _policy(Path(spec["version_dir"])) in GPU_POLICIES:
            options["num_gpus"] = 1
        return options

    def submit(self, job, spec: dict[str, Any]) -> Dispatched:
        if spec.get("remote"):  # MLflow: the daemon fetches (on a thread), ships, signs and publishes (executors.remote)
            return Dispatched(job, time.monotonic(), {"stage": "fetch", "future": self.stage.fetch(spec), "remote": spec})
        return Dispatched(job, time.monotonic(), self._start(job, spec))

    def _start(self, job, spec: dict[str, Any]) -> dict[str, Any] | WorkerResult:
        """The job's task on the cluster, its inputs shipped through the object store."""
        final = _final(spec)
        if final.exists():  # a result landed before the daemon could record it: sign it, never redo
            return self._completed(final, spec, {})
        from convrepair.daemon.job import never_readable

        inputs = self.ray.put(bundle.pack_inputs(Path(spec["version_dir"]), [Path(p) for p in spec.get("allow_read") or []],
                                                 never_readable(spec)))
        remote_spec = {key: value for key, value in spec.items() if key != "sign_key"}
        ref = self.task.options(**self.resources(spec), max_retries=0, retry_exceptions=False,
                                name=f"convrepair-job-{job.id}").remote(inputs, remote_spec, self.memory_mb, self.job_timeout)
        return {"stage": "task", "ref": ref, "spec": spec, "inputs": inputs}

    def poll(self, dispatched: Dispatched) -> WorkerResult | Lost | None:
        handle = dispatched.handle
        if isinstance(handle, WorkerResult):
            return handle
        seconds = time.monotonic() - dispatched.started
        if handle["stage"] in ("fetch", "publish"):  # the registry, on the daemon's threads
            future = handle["future"]
            if not future.done():
                if seconds <= self.job_timeout + QUEUE_SLACK:
                    return None
                return WorkerResult(False, None, f"the registry {handle['stage']} took over {seconds:.0f} s", seconds,
                                    retry=True, reason="timeout")
            try:
                value = future.result()
            except Exception as exc:  # noqa: BLE001 - an outage, a missing artifact, a bad config: the job's outcome
                return remote.failed(exc, seconds)
            if handle["stage"] == "publish":
                return WorkerResult(True, value, None, seconds)
            done, local = value
            if done is not None:
                return WorkerResult(True, done, None, seconds)
            return self._next(dispatched, self._start(dispatched.job, local), handle["remote"], seconds)
        outcome = self._task_outcome(dispatched, handle, seconds)
        return self._next(dispatched, outcome, handle.get("remote"), seconds) if isinstance(outcome, WorkerResult) else outcome

    def _next(self, dispatched: Dispatched, outcome: dict[str, Any] | WorkerResult, remote_spec: dict[str, Any] | None,
              seconds: float) -> WorkerResult | None:
        """A task just started (None: still running), or a remote registry's signed results on their way back."""
        if isinstance(outcome, dict):
            dispatched.handle = {**outcome, "remote": remote_spec}
            return None
        if remote_spec is not None and outcome.ok:
            dispatched.handle = {"stage": "publish", "remote": remote_spec,
                                 "future": self.stage.publish(remote_spec, Path(outcome.result["results"]), outcome.result)}
            return None
        return outcome

    def _task_outcome(self, dispatched: Dispatched, handle: dict[str, Any], seconds: float) -> WorkerResult | Lost | None:
        ready, _ = self.ray.wait([handle["ref"]], timeout=0)
        if not ready:
            if seconds <= self.job_timeout + QUEUE_SLACK:
                return None
            self.ray.cancel(handle["ref"], force=True)
            return WorkerResult(False, None, f"Ray task timed out after {seconds:.0f} s", seconds, retry=True, reason="timeout")
        try:
            out = self.ray.get(handle["ref"])
        except self.ray.exceptions.RayTaskError as exc:  # our task code raised: a bug, reported as such
            return WorkerResult(False, None, f"Ray task failed: {exception_text(exc.cause or exc, 300)}", seconds,
                                reason="internal-error")
        except self.ray.exceptions.RayError as exc:  # worker or node died, object lost, cancelled
            return Lost(f"{type(exc).__name__}: {exception_text(exc, 200)}")
        dispatched.where = Where(out["host"], out["node"], out["pid"])
        if not out["ok"]:
            return WorkerResult(False, out["result"], out["error"], seconds, retry=out["retry"], reason=out.get("reason"),
                                transient=bool(out.get("transient")))
        # an attempt's scratch name: the daemon clears what a crash left there when it claims the job again
        scratch = _final(handle["spec"]).parent / scratch_name(dispatched.job.id, f"{dispatched.job.attempts}-landing")
        extra = {"executor": {"kind": self.name, "host": out["host"], "node": out["node"], "pid": out["pid"]}}
        try:
            bundle.land(out["results"], out["worker_root"], _final(handle["spec"]), scratch, extra)
            return self._completed(_final(handle["spec"]), handle["spec"], out["result"] or {}, seconds)
        except (OSError, ValueError) as exc:
            return WorkerResult(False, None, f"could not write the results: {type(exc).__name__}: {exception_text(exc, 200)}",
                                seconds, retry=True, reason="os-error")

    def _completed(self, final: Path, spec: dict[str, Any], payload: dict, seconds: float = 0.0) -> WorkerResult:
        """The result in its registry place, signed there by the daemon (only when no log is there yet)."""
        import json

        from convrepair.daemon.job import JOB, LOG, REPORT
        from convrepair.ledger.log import write_signed_log

        report = json.loads((final / REPORT).read_text())
        if spec.get("sign_key") and not (final / LOG).exists():
            started = json.loads((final / JOB).read_text())["started"] if (final / JOB).exists() else None
            write_signed_log(report, final / LOG, Path(spec["sign_key"]), started)
        return WorkerResult(True, {"status": "done", "results": str(final), "verdict": report.get("verdict"),
                                   "label_agreement": (report.get("check_before") or {}).get("label_agreement"),
                                   **({"note": payload["note"]} if payload.get("note") else {})}, None, seconds)

    def kill(self, dispatched: Dispatched) -> None:
        if isinstance(dispatched.handle, dict) and "ref" in dispatched.handle:  # a fetch or publish thread finishes alone
            self.ray.cancel(dispatched.handle["ref"], force=True)

    def close(self) -> None:
        self.stage.close()
        self.ray.shutdown()


def _reachable(address: str | None, timeout: float = 5.0) -> None:
    """A HOST:PORT that accepts no connection is an error now (ray.init would retry for minutes)."""
    if not address or "://" in address or address == "auto" or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot connect to the Ray cluster at {address}: {exception_text(exc, 200)} "
                       "(start one with `ray start --head`)") from None


def _final(spec: dict[str, Any]) -> Path:
    return Path(spec["version_dir"]) / "convrepair" / spec["target"]


def _policy(version_dir: Path) -> str:
    try:
        raw = tomllib.loads(bundle.config_file(version_dir).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return "auto"
    repair = raw.get("repair")
    return repair.get("policy", "auto") if isinstance(repair, dict) else "auto"
