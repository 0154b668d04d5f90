"""Start a job in a worker process with a wall-clock timeout and a memory limit."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class WorkerResult:
    ok: bool
    result: dict[str, Any] | None
    error: str | None
    seconds: float
    retry: bool = False  # a failure that may go differently next time (a timeout, a killed worker)


def _prepare_child(megabytes: int):
    def apply() -> None:
        if megabytes:
            limit = megabytes * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        os.setpgrp()  # its own process group: a timeout kills the whole job
        _die_with_parent()

    return apply


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the daemon dies (kill -9 included), so a restarted daemon
    never races an orphan over the same job."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass


# What a job process must not inherit: the cluster's credentials are the daemon's, not a model's.
WITHHELD_ENV = ("RAY_AUTH_TOKEN",)


def start(spec: dict[str, Any], memory_mb: int) -> subprocess.Popen:
    """The job process, its spec on stdin: no file to leave behind when the daemon is killed."""
    env = {k: v for k, v in os.environ.items() if k not in WITHHELD_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-m", "convrepair.daemon.job", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=_prepare_child(memory_mb),
    )
    proc.stdin.write(json.dumps(spec))  # small (paths and options): fits the pipe, the child reads it first
    proc.stdin.close()
    proc.stdin = None  # communicate() must not flush a closed pipe
    return proc


def collect(proc: subprocess.Popen, started: float, timeout: float) -> WorkerResult | None:
    """None while running; the result once it ended (or was killed for its timeout)."""
    if proc.poll() is None:
        if time.monotonic() - started <= timeout:
            return None
        os.killpg(proc.pid, 9)
        proc.wait()
        return WorkerResult(False, None, f"timed out after {timeout:.0f} s", time.monotonic() - started, retry=True)
    out, err = proc.communicate()
    seconds = time.monotonic() - started
    last = out.strip().splitlines()[-1] if out.strip() else ""
    try:
        payload = json.loads(last)
    except ValueError:
        payload = None
    if proc.returncode == 0 and payload:
        return WorkerResult(True, payload, None, seconds)
    if payload and payload.get("error"):
        return WorkerResult(False, payload, payload["error"], seconds, retry=bool(payload.get("retry")))
    tail = " ".join(err.strip().splitlines()[-1:])[:300] if err else ""
    reason = f"worker died (exit {proc.returncode})" + (f": {tail}" if tail else "")
    if proc.returncode and proc.returncode < 0:
        reason = f"worker killed by signal {-proc.returncode} (memory limit?)"
    # killed from outside (SIGKILL: the OOM killer, a shutdown) may go differently; a crash of its own repeats
    retry = proc.returncode in (-signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT)
    return WorkerResult(False, None, reason, seconds, retry=retry)
