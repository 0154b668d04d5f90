"""Where a leased job runs: worker processes on the daemon's machine, or tasks on a Ray cluster.

The daemon's SQLite queue stays the single source of truth either way (leases, attempts,
exactly-once results); an executor only runs what the daemon leased and says how it ended:

    submit(job, spec) -> Dispatched     start it (never blocks on the job)
    poll(dispatched)  -> WorkerResult | Lost | None
                                        None: still running; Lost: the task vanished with its
                                        worker or node — the daemon stops renewing its lease, and
                                        the queue hands the job out again once the lease runs out
    kill(dispatched)                    stop it (shutdown)
    describe() -> dict                  where jobs run, for the start line (executor, node …)
    close()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from convrepair.daemon.queue import Job
    from convrepair.daemon.worker import WorkerResult

EXECUTORS = ("local", "ray")


@dataclass
class Where:
    """Where a job ran: the host, Ray's node id (None for a local process), the process id."""

    host: str | None = None
    node: str | None = None
    pid: int | None = None


@dataclass
class Dispatched:
    job: Job
    started: float  # time.monotonic() at submission
    handle: Any  # the executor's own (a Popen; a Ray ObjectRef …)
    where: Where = field(default_factory=Where)


@dataclass
class Lost:
    """The task is gone without a result (its worker process or node died)."""

    reason: str
    where: Where = field(default_factory=Where)


class Executor(Protocol):
    name: str

    def submit(self, job: Job, spec: dict[str, Any]) -> Dispatched: ...

    def poll(self, dispatched: Dispatched) -> WorkerResult | Lost | None: ...

    def kill(self, dispatched: Dispatched) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def open_executor(kind: str, *, memory_mb: int, job_timeout: float, ray_address: str | None = None,
                  num_cpus: float = 1.0, remote_registry: bool = False, workers: int = 1, log_dir: Path | None = None) -> Executor:
    """The executor named `kind` (`local` or `ray`); BadInput when it cannot start.

    `remote_registry`: jobs fetch and publish through the registry (MLflow): a local job does it
    itself; for a Ray task the daemon fetches, ships the files, signs and publishes (executors.remote)."""
    from convrepair.errors import BadInput

    if kind == "local":
        from convrepair.daemon.executors.local import LocalExecutor

        return LocalExecutor(memory_mb=memory_mb, job_timeout=job_timeout, workers=workers, log_dir=log_dir)
    if kind == "ray":
        from convrepair.daemon.executors.ray import RayExecutor

        return RayExecutor(address=ray_address, memory_mb=memory_mb, job_timeout=job_timeout, num_cpus=num_cpus)
    raise BadInput(f"unknown executor '{kind}' (available: {', '.join(EXECUTORS)})")
