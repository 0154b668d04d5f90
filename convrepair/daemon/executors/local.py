"""The default executor: each job in its own process on the daemon's machine (`worker.py`)."""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any

from convrepair.daemon import worker
from convrepair.daemon.executors import Dispatched, Where


class LocalExecutor:
    name = "local"

    def __init__(self, memory_mb: int, job_timeout: float):
        self.memory_mb = memory_mb
        self.job_timeout = job_timeout
        self.host = socket.gethostname()

    def submit(self, job, spec: dict[str, Any]) -> Dispatched:
        proc = worker.start(spec, self.memory_mb)
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
