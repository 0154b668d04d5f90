"""The process that stands between the parent and a contained worker and outlives it: a
subreaper (prctl PR_SET_CHILD_SUBREAPER), so every process the worker's tree leaves behind —
setsid() and double forks included — becomes its child, and is killed when the worker ends.

    parent (CLI / daemon job) ─ fork ─▶ supervisor (subreaper, own group) ─ fork ─▶ worker
                                                                       setsid, rlimit, close_range,
                                                                       exec a fresh interpreter with
                                                                       an allow-listed environment

The supervisor is a fork of the parent that never runs model code and never imports anything:
everything it needs is prepared before the fork. Its exit status mirrors the worker's (a signal
is re-raised). SIGTERM — from the parent on an error, or as its death signal when the parent
dies — kills the worker and its whole tree first.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
from dataclasses import dataclass

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_NR_CLOSE_RANGE = 436  # the same on x86_64 and aarch64


@dataclass(frozen=True)
class Launch:
    """Everything the supervisor and the worker need, prepared in the parent before the fork."""

    argv: list[str]
    env: dict[str, str]
    task_r: int  # becomes the worker's stdin: what to run
    message_w: int  # becomes fd 3: the worker's messages
    output_w: int  # becomes stdout and stderr
    memory_mb: int
    parent: int  # the parent's pid: a supervisor whose parent is already gone ends at once


def supervise(launch: Launch, libc: ctypes.CDLL) -> None:
    """Run in the forked child (`libc` loaded before the fork, SIGTERM blocked): start the worker,
    wait for it, kill what it leaves; never returns."""
    code = 70
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != launch.parent:
            os._exit(code)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1) != 0:
            _fail(launch, f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.setpgid(0, 0)  # its own group, apart from the parent's terminal signals and the worker's
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it sends SIGTERM
        me = os.getpid()
        worker = os.fork()
        if worker == 0:
            _become_worker(libc, launch, me)
        for fd in (launch.task_r, launch.message_w, launch.output_w):
            os.close(fd)
        signal.signal(signal.SIGTERM, lambda *_: _kill(worker, signal.SIGKILL, group=True))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        status = _wait_for(worker)
        kill_descendants()
        _mirror(status)
    except BaseException:  # noqa: BLE001 - never return into the parent's code
        os._exit(code)


def _become_worker(libc, launch: Launch, supervisor: int) -> None:
    try:
        os.setsid()  # its own session and process group: the only group its signals may reach
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != supervisor:
            os._exit(70)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        if launch.memory_mb:  # RLIMIT_DATA (private writable memory), not RLIMIT_AS: CUDA reserves
            limit = launch.memory_mb * 1024 * 1024  # vast PROT_NONE ranges that an address-space cap refuses
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        os.dup2(launch.task_r, 0)
        os.dup2(launch.output_w, 1)
        os.dup2(launch.output_w, 2)
        os.dup2(launch.message_w, 3)
        close_from(4, libc)
        os.execve(launch.argv[0], launch.argv, launch.env)
    except BaseException as exc:  # noqa: BLE001
        _fail(launch, f"starting the worker: {type(exc).__name__}: {exc}", fd=3)


def close_from(first: int, libc: ctypes.CDLL) -> None:
    """close_range(first, ~0): every descriptor from `first` up, however high."""
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(ctypes.c_long(_NR_CLOSE_RANGE), ctypes.c_uint(first), ctypes.c_uint(0xFFFFFFFF), ctypes.c_uint(0)) == 0:
        return
    for name in os.listdir("/proc/self/fd"):  # kernels before 5.9
        if int(name) >= first:
            try:
                os.close(int(name))
            except OSError:
                pass


def _fail(launch: Launch, text: str, fd: int | None = None) -> None:
    import json

    try:
        os.write(launch.message_w if fd is None else fd,
                 json.dumps({"error": {"kind": "ContainmentFailed", "message": text}}).encode() + b"\n")
    finally:
        os._exit(3)


def _wait_for(worker: int) -> int:
    """The worker's wait status; orphans reparented here meanwhile are reaped as they exit."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        if pid == worker:
            return status


def _kill(pid: int, sig: int, group: bool = False) -> None:
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_descendants() -> None:
    """SIGKILL every child (all of them are the worker's leftovers) until none is left: each kill
    reparents that child's own children here, so the loop ends with the whole tree gone."""
    me = os.getpid()
    while True:
        children = children_of(me)
        if not children:
            break
        for child in children:
            _kill(child, signal.SIGKILL)
        for child in children:
            try:
                os.waitpid(child, 0)
            except ChildProcessError:
                pass
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def children_of(parent: int) -> list[int]:
    """Live (or zombie) processes whose parent is `parent`, read from /proc."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(name))
    return found


def _mirror(status: int) -> None:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
        os._exit(128 + number)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 70)
