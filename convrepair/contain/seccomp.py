"""A seccomp-BPF filter, built by hand, that takes sockets away from a process.

Read top to bottom, the filter says:

    a syscall of another ABI (i386 `int 0x80`, x32)       -> EPERM   (socketcall would slip past)
    socket(family, …)                                     -> EPERM   (every family: no network, no
                                                                      connecting to daemons' UNIX sockets)
    io_uring_setup / io_uring_enter / io_uring_register   -> EPERM   (io_uring can open sockets itself)
    anything else                                         -> allowed (Landlock guards the files)

socketpair() stays allowed: it makes a connected pair inside the process and reaches nothing.
Like Landlock, a filter binds the calling thread and everything it forks or execs, for good.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000

# BPF opcodes
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K

# offsets in struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6];}
_NR, _ARCH, _ARG0 = 0, 4, 16

# (audit arch, socket, io_uring_setup, io_uring_enter, io_uring_register, first x32 number or None)
_ARCHES = {
    "x86_64": (0xC000003E, 41, 425, 426, 427, 0x40000000),
    "aarch64": (0xC00000B7, 198, 425, 426, 427, None),
}


class SeccompUnavailable(OSError):
    """No seccomp filter could be installed (unknown architecture, or the kernel refused)."""


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def no_sockets_program(machine: str | None = None) -> list[bytes]:
    """The filter's instructions for this machine (see the module docstring)."""
    machine = machine or platform.machine()
    if machine not in _ARCHES:
        raise SeccompUnavailable(f"no socket filter for the {machine} architecture")
    arch, socket_nr, uring_setup, uring_enter, uring_register, x32 = _ARCHES[machine]
    deny = _RET_ERRNO | errno.EPERM
    program = [
        _insn(_LD_W_ABS, 0, 0, _ARCH),
        _insn(_JEQ_K, 1, 0, arch),  # native ABI: go on; else deny
        _insn(_RET_K, 0, 0, deny),
        _insn(_LD_W_ABS, 0, 0, _NR),
    ]
    if x32 is not None:
        program += [_insn(_JGE_K, 0, 1, x32), _insn(_RET_K, 0, 0, deny)]
    for number in (socket_nr, uring_setup, uring_enter, uring_register):
        program += [_insn(_JEQ_K, 0, 1, number), _insn(_RET_K, 0, 0, deny)]
    program.append(_insn(_RET_K, 0, 0, _RET_ALLOW))
    return program


def deny_sockets() -> None:
    """Install the filter on the calling thread (NO_NEW_PRIVS first, so no privilege is needed)."""
    program = b"".join(no_sockets_program())
    count = len(program) // 8
    filters = ctypes.create_string_buffer(program, len(program))

    class _Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = _Prog(count, ctypes.cast(filters, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SeccompUnavailable(f"prctl(NO_NEW_PRIVS) failed: errno {ctypes.get_errno()}")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise SeccompUnavailable(f"prctl(SECCOMP_MODE_FILTER) failed: errno {ctypes.get_errno()}")


def available() -> bool:
    """Whether this kernel has seccomp filters (a `Seccomp:` line in /proc/self/status)."""
    try:
        with open("/proc/self/status") as handle:
            return any(line.startswith("Seccomp:") for line in handle) and platform.machine() in _ARCHES
    except OSError:
        return False
