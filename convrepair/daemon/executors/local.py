"""The default executor: each job in its own process on the daemon's machine (`worker.py`), with
thread pools sized so that `workers` jobs share the machine's cores, and its output in
`STATE/logs/job-<id>.log`."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from convrepair.daemon import worker
from convrepair.daemon.executors import Dispatched, Where


class LocalExecutor:
    name = "local"

    def __init__(self, memory_mb: int, job_timeout: float, workers: int = 1, log_dir: Path | None = None):
        self.memory_mb = memory_mb
        self.job_timeout = job_timeout
        self.threads = max(1, (os.cpu_count() or 1) // max(1, workers))
        self.log_dir = log_dir
        self.host = socket.gethostname()

    def describe(self) -> dict[str, Any]:
        """For the start line: where jobs run."""
        return {"executor": self.name, "node": self.host, "threads_per_job": self.threads}

    def log_path(self, job) -> Path | None:
        return self.log_dir / f"job-{job.id}.log" if self.log_dir is not None else None

    def submit(self, job, spec: dict[str, Any]) -> Dispatched:
        log = self.log_path(job)
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a") as out:
                out.write(f"--- convrepair job {job.id} attempt {job.attempts}: {job.model}/{job.version} -> {job.target}\n")
        proc = worker.start(spec, self.memory_mb, threads=self.threads, log=log)
        return Dispatched(job, time.monotonic(), proc, Where(self.host, None, proc.pid))

    def poll(self, dispatched: Dispatched):
        return worker.collect(dispatched.handle, dispatched.started, self.job_timeout)

    def kill(self, dispatched: Dispatched) -> None:
        proc = dispatched.handle
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def close(self) -> None:
        pass
