"""A seccomp-BPF filter, built by hand, that takes from a process every way out that Landlock does
not cover: sockets, signals to other processes, reading or writing other processes' memory.

Read top to bottom, the filter says (the worker is process W, leader of its own session and group):

    a syscall of another ABI (i386 `int 0x80`, x32)       -> EPERM   (socketcall would slip past)
    socket, socketpair (every family)                     -> EPERM   (no network, no daemons' UNIX
                                                                      sockets, no fd passing)
    io_uring_setup / _enter / _register                   -> EPERM   (io_uring does I/O on its own)
    ptrace, process_vm_readv / _writev, pidfd_getfd, kcmp -> EPERM   (other processes' memory, fds)
    pidfd_send_signal, tkill                              -> EPERM   (a pidfd's target cannot be read
                                                                      from the arguments)
    mount family, chroot, pivot_root, unshare, setns, bpf,
      perf_event_open, userfaultfd, keys, modules, kexec,
      open_by_handle_at, process_madvise                  -> EPERM
    kill(pid, …)               allowed for pid 0, W, -W only (its own group, itself)   else EPERM
    tgkill / rt_sigqueueinfo / rt_tgsigqueueinfo(tgid, …) allowed for tgid W only       else EPERM
    anything else                                         -> allowed (Landlock guards the files)

Only the low 32 bits of a pid argument are compared: the kernel reads no more of it. A process
the worker forks can signal its own group and, with tgkill, nothing at all (its own `abort()`
still ends it). Like Landlock, a filter binds the calling thread and everything it forks or
execs, for good.
"""

from __future__ import annotations

import ctypes
import errno
import os
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

# offsets in struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6];} (little-endian: low word first)
_NR, _ARCH, _ARG0 = 0, 4, 16

DENIED = ("socket", "socketpair", "io_uring_setup", "io_uring_enter", "io_uring_register", "ptrace",
          "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp", "pidfd_send_signal", "tkill",
          "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "bpf", "perf_event_open", "userfaultfd",
          "keyctl", "add_key", "request_key", "init_module", "finit_module", "delete_module", "kexec_load",
          "kexec_file_load", "open_by_handle_at", "process_madvise", "open_tree", "move_mount", "fsopen",
          "fsconfig", "fsmount", "fspick", "mount_setattr")
_SIGNALS = ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")

_GENERIC = {"socket": 198, "socketpair": 199, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
            "kcmp": 272, "tkill": 130, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97,
            "setns": 268, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "keyctl": 219, "add_key": 217,
            "request_key": 218, "init_module": 105, "finit_module": 273, "delete_module": 106, "kexec_load": 104,
            "kexec_file_load": 294, "open_by_handle_at": 265, "kill": 129, "tgkill": 131, "rt_sigqueueinfo": 138,
            "rt_tgsigqueueinfo": 240}
_X86_64 = {"socket": 41, "socketpair": 53, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
           "kcmp": 312, "tkill": 200, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272,
           "setns": 308, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250, "add_key": 248,
           "request_key": 249, "init_module": 175, "finit_module": 313, "delete_module": 176, "kexec_load": 246,
           "kexec_file_load": 320, "open_by_handle_at": 304, "kill": 62, "tgkill": 234, "rt_sigqueueinfo": 129,
           "rt_tgsigqueueinfo": 297}
_COMMON = {"io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "pidfd_send_signal": 424,
           "pidfd_getfd": 438, "process_madvise": 440, "open_tree": 428, "move_mount": 429, "fsopen": 430,
           "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442}
# (audit arch, syscall numbers, first x32 number or None)
_ARCHES = {
    "x86_64": (0xC000003E, _X86_64 | _COMMON, 0x40000000),
    "aarch64": (0xC00000B7, _GENERIC | _COMMON, None),
}


class SeccompUnavailable(OSError):
    """No seccomp filter could be installed (unknown architecture, or the kernel refused)."""


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _only_to(number: int, allowed: tuple[int, ...]) -> list[bytes]:
    """Syscall `number` passes only when its first argument's low word is one of `allowed`."""
    deny = _RET_ERRNO | errno.EPERM
    body = [_insn(_LD_W_ABS, 0, 0, _ARG0)]
    body += [_insn(_JEQ_K, len(allowed) - i, 0, value & 0xFFFFFFFF) for i, value in enumerate(allowed)]
    body += [_insn(_RET_K, 0, 0, deny), _insn(_RET_K, 0, 0, _RET_ALLOW)]
    return [_insn(_LD_W_ABS, 0, 0, _NR), _insn(_JEQ_K, 0, len(body), number), *body]


def program(worker: int, machine: str | None = None) -> list[bytes]:
    """The filter's instructions for process `worker` on this machine (see the module docstring)."""
    machine = machine or platform.machine()
    if machine not in _ARCHES:
        raise SeccompUnavailable(f"no seccomp filter for the {machine} architecture")
    arch, numbers, x32 = _ARCHES[machine]
    deny = _RET_ERRNO | errno.EPERM
    out = [
        _insn(_LD_W_ABS, 0, 0, _ARCH),
        _insn(_JEQ_K, 1, 0, arch),  # native ABI: go on; else deny
        _insn(_RET_K, 0, 0, deny),
        _insn(_LD_W_ABS, 0, 0, _NR),
    ]
    if x32 is not None:
        out += [_insn(_JGE_K, 0, 1, x32), _insn(_RET_K, 0, 0, deny)]
    for name in DENIED:
        out += [_insn(_JEQ_K, 0, 1, numbers[name]), _insn(_RET_K, 0, 0, deny)]
    out += _only_to(numbers["kill"], (0, worker, -worker))
    for name in ("tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        out += _only_to(numbers[name], (worker,))
    out.append(_insn(_RET_K, 0, 0, _RET_ALLOW))
    return out


def confine() -> None:
    """Install the filter on the calling thread for this process (NO_NEW_PRIVS first, so no
    privilege is needed). The caller must lead its own process group (setsid)."""
    pid = os.getpid()
    if os.getpgid(0) != pid:
        raise SeccompUnavailable("the worker does not lead its own process group")
    code = b"".join(program(pid))
    count = len(code) // 8
    filters = ctypes.create_string_buffer(code, len(code))

    class _Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = _Prog(count, ctypes.cast(filters, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SeccompUnavailable(f"prctl(NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise SeccompUnavailable(f"prctl(SECCOMP_MODE_FILTER) failed: {os.strerror(ctypes.get_errno())}")


def available() -> bool:
    """Whether this kernel has seccomp filters (a `Seccomp:` line in /proc/self/status)."""
    try:
        with open("/proc/self/status") as handle:
            return any(line.startswith("Seccomp:") for line in handle) and platform.machine() in _ARCHES
    except OSError:
        return False
