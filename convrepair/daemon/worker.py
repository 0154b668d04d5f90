"""Start a job in a worker process with a wall-clock timeout, a memory limit and its own thread
counts; its output is read while it runs (a thread per job), so a job that logs a lot never blocks
on a full pipe. The last part of its output is kept, and the whole goes to a log file when asked."""

from __future__ import annotations

import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

KEEP_BYTES = 256 * 1024  # of each stream, in memory: the result is the last line of stdout
LOG_LIMIT = 32 * 1024 * 1024  # a job's log file stops growing here (its tail is still kept in memory)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "TF_NUM_INTRAOP_THREADS")


@dataclass
class WorkerResult:
    ok: bool
    result: dict[str, Any] | None
    error: str | None
    seconds: float
    retry: bool = False  # a failure that may go differently next time (a timeout, a killed worker)
    reason: str | None = None  # why it failed, as a short label (the metric's): timeout, killed, bad-input …
    transient: bool = False  # the registry or its artifact store was unreachable: not the job's fault, no attempt spent


class Drain:
    """Reads a job's stdout and stderr until both close, keeping each one's last KEEP_BYTES and
    copying both into `log` (a file, up to LOG_LIMIT) when given."""

    def __init__(self, proc: subprocess.Popen, log: Path | None = None):
        self.kept: dict[str, deque[bytes]] = {"stdout": deque(), "stderr": deque()}
        self._sizes = {"stdout": 0, "stderr": 0}
        self._log: IO[bytes] | None = None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(log, "ab")
        self._written = 0
        self._thread = threading.Thread(target=self._run, args=(proc.stdout, proc.stderr), daemon=True,
                                        name=f"convrepair-drain-{proc.pid}")
        self._thread.start()

    def _run(self, stdout: IO[bytes], stderr: IO[bytes]) -> None:
        selector = selectors.DefaultSelector()
        selector.register(stdout, selectors.EVENT_READ, "stdout")
        selector.register(stderr, selectors.EVENT_READ, "stderr")
        try:
            while selector.get_map():
                for key, _ in selector.select():
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        continue
                    self._keep(key.data, chunk)
        finally:
            selector.close()
            if self._log is not None:
                self._log.close()

    def _keep(self, stream: str, chunk: bytes) -> None:
        kept = self.kept[stream]
        kept.append(chunk)
        self._sizes[stream] += len(chunk)
        while self._sizes[stream] - len(kept[0]) >= KEEP_BYTES:
            self._sizes[stream] -= len(kept.popleft())
        if self._log is not None and self._written < LOG_LIMIT:
            part = chunk[: LOG_LIMIT - self._written]
            self._log.write(part)
            self._written += len(part)
            if self._written >= LOG_LIMIT:
                self._log.write(b"\n[convrepair: the job's log stops here, at its size limit]\n")
            self._log.flush()

    def text(self, stream: str, timeout: float = 5.0) -> str:
        """What was kept of `stream` once the job ended (a grandchild holding the pipe open is not waited for)."""
        self._thread.join(timeout)
        return b"".join(list(self.kept[stream])).decode("utf-8", "replace")


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


def thread_env(threads: int | None) -> dict[str, str]:
    """Thread-pool sizes for one job (`threads` each), unless the operator set them: N jobs on a
    machine must not each start a pool as wide as the machine (docs/SCALE.md: 26 % lost)."""
    if not threads:
        return {}
    return {name: str(threads) for name in THREAD_VARIABLES if name not in os.environ}


JOB_COMMAND = ("-m", "convrepair.daemon.job", "-")  # after the interpreter


def start(spec: dict[str, Any], memory_mb: int, threads: int | None = None, log: Path | None = None,
          command: tuple[str, ...] = JOB_COMMAND) -> subprocess.Popen:
    """The job process (`python COMMAND`), its spec on stdin: no file to leave behind when the
    daemon is killed. Its output is drained from now on (`proc.drain`), into `log` too when given."""
    env = {k: v for k, v in os.environ.items() if k not in WITHHELD_ENV}
    env.update(thread_env(threads))
    proc = subprocess.Popen(
        [sys.executable, *command],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        preexec_fn=_prepare_child(memory_mb),
    )
    proc.stdin.write(json.dumps(spec).encode())  # small (paths and options): fits the pipe, the child reads it first
    proc.stdin.close()
    proc.stdin = None
    proc.drain = Drain(proc, log)
    return proc


def collect(proc: subprocess.Popen, started: float, timeout: float) -> WorkerResult | None:
    """None while running; the result once it ended (or was killed for its timeout)."""
    if proc.poll() is None:
        if time.monotonic() - started <= timeout:
            return None
        os.killpg(proc.pid, 9)
        proc.wait()
        return WorkerResult(False, None, f"timed out after {timeout:.0f} s", time.monotonic() - started, retry=True,
                            reason="timeout")
    drain = getattr(proc, "drain", None)  # a process not made by start(): its pipes are read now
    out, err = (drain.text("stdout"), drain.text("stderr", timeout=0.5)) if drain else proc.communicate()
    out, err = (text.decode("utf-8", "replace") if isinstance(text, bytes) else text or "" for text in (out, err))
    seconds = time.monotonic() - started
    last = out.strip().splitlines()[-1] if out.strip() else ""
    try:
        payload = json.loads(last)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        payload = None
    if proc.returncode == 0 and payload:
        return WorkerResult(True, payload, None, seconds)
    if payload and payload.get("error"):
        return WorkerResult(False, payload, payload["error"], seconds, retry=bool(payload.get("retry")),
                            reason=str(payload.get("reason") or "error"), transient=bool(payload.get("transient")))
    tail = " ".join(err.strip().splitlines()[-1:])[:300] if err else ""
    reason = f"worker died (exit {proc.returncode})" + (f": {tail}" if tail else "")
    label = "crashed"
    if proc.returncode and proc.returncode < 0:
        reason, label = f"worker killed by signal {-proc.returncode} (memory limit?)", "killed"
    # killed from outside (SIGKILL: the OOM killer, a shutdown) may go differently; a crash of its own repeats
    retry = proc.returncode in (-signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT)
    return WorkerResult(False, None, reason, seconds, retry=retry, reason=label)
