"""Worker code turned attacker: what a model that gained code execution inside the contained
worker (a framework op with a memory-safety bug is enough) tries next, one test per hole.

The tasks below run in the real contained worker (a fresh interpreter under Landlock, seccomp
and a subreaper); cloudpickle carries them there by value."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from convrepair.contain.worker import run_contained
from convrepair.errors import BadInput, UnsafeModel

cloudpickle.register_pickle_by_value(sys.modules[__name__])

TOKEN_HEAD, TOKEN_TAIL = "mlflow-token-", "7f3a9c0e5b1d"  # never joined here: the memory scan below looks for the join


def _outlive(_send) -> int:
    """Fork a grandchild in a session of its own that sleeps on after the worker returns."""
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            time.sleep(60)
            os._exit(0)
        os.write(w, str(grandchild).encode())
        os._exit(0)
    os.wait()
    return int(os.read(r, 32))


def test_a_grandchild_in_its_own_session_does_not_outlive_the_worker(contained):
    grandchild, containment = run_contained(_outlive, reads=[])
    assert "subreaper" in containment.to_json()["process_tree"]
    assert not Path(f"/proc/{grandchild}").exists(), "the worker's grandchild outlived it"


def _read_tokens(_send, head: str, tail: str) -> dict:
    import re

    found = {"environ": sorted(k for k in os.environ if "TOKEN" in k or "SECRET" in k)}
    with open("/proc/self/environ", "rb") as handle:
        environ = handle.read()
    found["proc_environ"] = b"SECRET" in environ or b"TOKEN" in environ
    pattern = re.compile(re.escape(head.encode()) + b"(?=" + re.escape(tail.encode()) + b")")
    hits = 0
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", buffering=0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r") or "[vvar" in line or "[vsyscall" in line:
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                hits += len(pattern.findall(mem.read(end - start)))
            except (OSError, OverflowError, ValueError):
                continue
    found["memory_hits"] = hits
    return found


def test_the_worker_sees_no_token_in_its_environment_or_its_memory(contained, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN_HEAD + TOKEN_TAIL)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TOKEN_HEAD + TOKEN_TAIL)
    monkeypatch.setenv("TF_TOKEN_app_terraform_io", TOKEN_HEAD + TOKEN_TAIL)  # Terraform's, not TensorFlow's
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == TOKEN_HEAD + TOKEN_TAIL  # the parent holds it in memory
    found, _ = run_contained(_read_tokens, TOKEN_HEAD, TOKEN_TAIL, reads=[])
    assert found == {"environ": [], "proc_environ": False, "memory_hits": 0}


def _attack_processes(_send, sibling: int) -> dict:
    import ctypes
    import socket

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    out = {}

    def attempt(name, call):
        try:
            call()
            out[name] = "done"
        except OSError as exc:
            out[name] = exc.errno

    attempt("kill sibling", lambda: os.kill(sibling, signal.SIGKILL))
    attempt("kill every process", lambda: os.kill(-1, signal.SIGKILL))
    attempt("kill the sibling's group", lambda: os.killpg(os.getpgid(sibling), signal.SIGKILL))
    attempt("kill the supervisor", lambda: os.kill(os.getppid(), signal.SIGKILL))
    attempt("signal via a pidfd", lambda: signal.pidfd_send_signal(os.pidfd_open(sibling), signal.SIGKILL))
    attempt("tgkill sibling", lambda: _syscall_ok(libc, 234 if os.uname().machine == "x86_64" else 131, sibling, sibling, 9))
    attempt("ptrace attach", lambda: _syscall_ok(libc, 101 if os.uname().machine == "x86_64" else 117, 16, sibling, 0, 0))
    attempt("socketpair", lambda: socket.socketpair())
    attempt("unix socket", lambda: socket.socket(socket.AF_UNIX))
    attempt("own group", lambda: os.kill(0, 0))
    attempt("itself", lambda: os.kill(os.getpid(), 0))
    return out


def _syscall_ok(libc, number: int, *args: int) -> None:
    import ctypes

    if libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args)) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def test_the_worker_cannot_signal_trace_or_connect_outside_its_own_group(contained):
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        out, _ = run_contained(_attack_processes, sibling.pid, reads=[])
        assert sibling.poll() is None, "the worker killed a sibling process"
    finally:
        sibling.kill()
        sibling.wait()
    denied = {name: errno for name, errno in out.items() if name not in ("own group", "itself")}
    assert set(denied.values()) == {1}, out  # EPERM, every one
    assert out["own group"] == "done" and out["itself"] == "done"


def _read_key(_send, key: str) -> str:
    return Path(key).read_text()


def test_the_worker_cannot_read_a_key_outside_its_grants(contained, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "m.onnx").write_text("model")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "service.key").write_text("PRIVATE")
    with pytest.raises(UnsafeModel, match="Permission denied"):
        run_contained(_read_key, str(tmp_path / "keys" / "service.key"), reads=[tmp_path / "model" / "m.onnx"])
    assert run_contained(_read_key, str(tmp_path / "model" / "m.onnx"), reads=[tmp_path / "model" / "m.onnx"])[0] == "model"


def _open_fds(_send) -> list[int]:
    return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))


def test_no_descriptor_of_the_parent_reaches_the_worker_however_high(contained, tmp_path):
    """An fd above the soft limit (and above 65536 where the hard limit allows) still reaches a
    worker that closes "up to the limit"; close_range closes everything."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    high = min(hard, 1 << 20) - 1
    secret = tmp_path / "secret"
    secret.write_text("secret")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fd = os.open(secret, os.O_RDONLY)
    try:
        os.dup2(fd, high, inheritable=True)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1024), hard))  # the fd stays open above it
        fds, _ = run_contained(_open_fds, reads=[])
    finally:
        os.close(fd)
        os.close(high)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert high not in fds and max(fds) < 64, fds


def _write_beside(_send, stage: str) -> str:
    Path(stage, "model.onnx").write_bytes(b"model")
    Path(stage, "trust.json").write_text('{"keys": ["attacker"]}')
    Path(stage, "keys").mkdir()
    return "written"


def test_an_unexpected_stage_entry_fails_the_publication_and_touches_nothing(contained, tmp_path):
    from convrepair.contain.staging import StagedOutputs

    out = tmp_path / "out"
    (out / "keys").mkdir(parents=True)
    (out / "keys" / "reviewer.key").write_text("KEY")
    (out / "trust.json").write_text("{}")
    with StagedOutputs(force=True) as staged:
        staged.place(out / "model.onnx")
        run_contained(_write_beside, str(staged.folder(out)), reads=[], writes=staged.writes())
        with pytest.raises(BadInput, match="not asked for"):
            staged.publish()
    assert (out / "keys" / "reviewer.key").read_text() == "KEY" and (out / "trust.json").read_text() == "{}"
    assert sorted(p.name for p in out.iterdir()) == ["keys", "trust.json"]


def _allocate(_send) -> int:
    return len(bytearray(3 << 30))


def test_the_worker_is_held_to_its_memory_limit(contained):
    with pytest.raises(BadInput, match="ran out of memory under the worker's 512 MB limit \\(--memory-mb\\)"):
        run_contained(_allocate, reads=[], memory_mb=512)


def test_a_companion_linking_to_a_key_grants_nothing(contained, tmp_path):
    """`model.onnx.data` beside the model, a link to the service key: the worker may read the model
    and its real companions, never what a companion links to."""
    folder = tmp_path / "registry" / "m" / "1"
    folder.mkdir(parents=True)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "service.key").write_text("PRIVATE")
    (folder / "model.onnx").write_text("model")
    (folder / "model.onnx.convrepair.json").write_text("{}")
    (folder / "model.onnx.data").symlink_to(tmp_path / "keys" / "service.key")
    assert run_contained(_read_key, str(folder / "model.onnx.convrepair.json"), reads=[folder / "model.onnx"])[0] == "{}"
    with pytest.raises(UnsafeModel, match="Permission denied"):
        run_contained(_read_key, str(folder / "model.onnx.data"), reads=[folder / "model.onnx"])
