"""Contained execution: models run in a worker that reads only the models, the data and the
Python installation, writes only its scratch, and opens no sockets (Landlock + seccomp).

This module holds what a process knows about its own containment — set once by the worker (or
by the CLI when none could be had) — and the guard the loaders of code-carrying formats call.
The mechanisms live in `landlock`, `seccomp` and `policy`; the forked worker in `worker`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convrepair.errors import UnsafeModel

# formats whose files hold a program the framework runs, not just a graph of known ops
CODE_FORMATS = ("torchscript", "savedmodel")
DISABLE_ENV = "CONVREPAIR_CONTAIN"  # "off": run uncontained (debugging, measuring); code formats need trust


DEFAULT_MEMORY_MB = 8192  # a worker's address space, as a daemon job's (`--memory-mb`, 0: none)


@dataclass(frozen=True)
class Containment:
    """What confined the process that ran the models — as requested by the parent and confirmed
    by the worker before any model code ran."""

    landlock_abi: int  # 0: no Landlock
    seccomp: bool  # the filter of `seccomp.py`: every socket family, foreign signals, ptrace …
    reason: str | None = None  # why there is none (or less than both)
    memory_mb: int = 0  # the worker's address-space limit (0: none)

    @property
    def files(self) -> bool:
        return self.landlock_abi >= 1

    @property
    def network(self) -> bool:
        """Every socket family denied: only seccomp does that (Landlock ABI 4 stops TCP alone)."""
        return self.seccomp

    @property
    def in_force(self) -> bool:
        return self.files and self.network

    def summary(self) -> str:
        if not self.in_force:
            return f"not contained ({self.reason or 'no Landlock or seccomp'})"
        parts = [f"Landlock ABI {self.landlock_abi}"] + (["seccomp"] if self.seccomp else [])
        return ("contained: " + " + ".join(parts) + " (files: models, data, Python read-only; scratch writable; "
                "no sockets; signals to its own group only; own session, whole tree killed at the end)")

    def to_json(self) -> dict[str, Any]:
        if self.network:
            network = "denied"
        else:
            network = "tcp denied, other sockets open" if self.landlock_abi >= 4 else "open"
        held = self.in_force
        return {"in_force": held, "landlock_abi": self.landlock_abi, "seccomp": self.seccomp,
                "files": "restricted" if self.files else "unrestricted",
                "network": network,
                "signals": "own process group only" if self.seccomp else
                           ("own Landlock domain only" if self.landlock_abi >= 6 else "unrestricted"),
                "other_processes": "no ptrace, no process_vm_*, no pidfd_getfd" if self.seccomp else "unrestricted",
                "process_tree": "own session; subreaper kills every descendant when it ends" if held else "none (in process)",
                "environment": "allow-list" if held else "inherited (in process)",
                "fds": "none above stderr but the job's channel" if held else "inherited (in process)",
                "memory_mb": self.memory_mb if held else None,
                "reason": self.reason}


_declared: dict[str, Any] = {"containment": None, "trust_code": False}


def declare(containment: Containment | None, trust_code: bool) -> None:
    """Record this process's containment and whether model code is trusted without it."""
    _declared.update(containment=containment, trust_code=trust_code)


def current() -> Containment | None:
    """This process's containment; None when nobody declared one (a library caller's process)."""
    return _declared["containment"]


def guard_code_format(fmt: str, path: Path) -> None:
    """Refuse to load a format that carries code when a job runs it uncontained and untrusted.

    A library caller that declared nothing is not refused: it runs its own models itself.
    """
    containment = current()
    if containment is None or containment.in_force or _declared["trust_code"] or fmt not in CODE_FORMATS:
        return
    raise UnsafeModel(
        f"{fmt} models carry code and no containment is in force here ({containment.reason}); "
        "pass --trust-model-code to run it anyway", path)


def probe() -> Containment:
    """What a worker started now could get (cheap: one syscall and one /proc read)."""
    from convrepair.contain import landlock, seccomp

    if os.environ.get(DISABLE_ENV, "").lower() in ("0", "off", "no", "false"):
        return Containment(0, False, f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}")
    abi = landlock.abi_version()
    has_seccomp = seccomp.available()
    reason = None if abi and has_seccomp else ", ".join(
        ([] if abi else ["no Landlock in this kernel"]) + ([] if has_seccomp else ["no seccomp filter"]))
    return Containment(abi, has_seccomp, reason)
