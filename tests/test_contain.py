"""The contained worker stops what a model does on its own — without the scanners' help: hostile
TorchScript and SavedModel code loaded and run directly in the worker cannot write a file, read
one outside the job, or connect to a socket; and the CLI says which containment was in force."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from convrepair.contain import probe


def require_containment() -> None:
    """Skip where the kernel offers no containment — but fail under CI=true, where these tests
    exist to prove it (.ci/run runs on a kernel with Landlock and seccomp)."""
    containment = probe()
    if containment.in_force:
        return
    message = f"no containment on this machine: {containment.reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: the containment tests must run)")
    pytest.skip(message)


@pytest.fixture
def needs_containment() -> None:
    require_containment()

# Runs in its own interpreter (which imports no framework before forking its workers). Each task
# bypasses convrepair's loaders — and so the scanners — and runs the model's code directly.
DRIVER = """
import json, socket, sys
from pathlib import Path
from convrepair.contain.worker import run_contained

root = Path(sys.argv[1])  # the hostile models
port = int(sys.argv[2])
job = Path(sys.argv[3])  # the job's model (readable) and a secret beside it (not)

def torchscript(_send):
    import torch
    module = torch.jit.load(str(root / "writer.pt"))
    return module(torch.zeros(1)).tolist()

def savedmodel(_send):
    import tensorflow as tf
    loaded = tf.saved_model.load(str(root / "writer.savedmodel"))
    return loaded.signatures["serving_default"](x=tf.zeros([1, 1, 8, 8]))["y"].numpy().tolist()

def connect(_send):
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        return "connected"

def read_outside(_send):
    return (job / "secret.txt").read_text()

def scratch_and_model(_send):
    import tempfile
    with tempfile.NamedTemporaryFile(mode="w") as handle:  # its own scratch is writable
        handle.write("ok")
    return (job / "model" / "weights.bin").read_text()  # what it was given is readable

outcomes = {}
for task in (torchscript, savedmodel, connect, read_outside, scratch_and_model):
    try:
        result, containment = run_contained(task, reads=[job / "model" / "weights.bin", root / "writer.pt", root / "writer.savedmodel"])
        outcomes[task.__name__] = {"ok": result, "in_force": containment.in_force}
    except Exception as exc:
        outcomes[task.__name__] = {"error": type(exc).__name__, "message": str(exc)}
print(json.dumps(outcomes))
"""


@pytest.fixture
def hostile(tmp_path, tmp_path_factory) -> dict[str, Path]:
    from test_scan import hostile_models

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_text("weights")
    (tmp_path / "secret.txt").write_text("secret")
    return hostile_models(tmp_path_factory) | {"job": tmp_path}


@pytest.mark.slow
def test_the_sandbox_alone_stops_writes_reads_and_connections(hostile, needs_containment):
    victim = hostile["victim"]
    victim.write_text("original")
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    script = hostile["job"] / "driver" / "driver.py"
    script.parent.mkdir()
    script.write_text(textwrap.dedent(DRIVER))
    proc = subprocess.run([sys.executable, str(script), str(hostile["root"]), str(listener.getsockname()[1]), str(hostile["job"])],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    listener.close()
    assert proc.returncode == 0, proc.stderr
    outcomes = json.loads(proc.stdout.strip().splitlines()[-1])

    assert victim.read_text() == "original", "the TorchScript model wrote through torch.from_file"
    assert outcomes["torchscript"]["error"] == "UnsafeModel" and "Permission denied" in outcomes["torchscript"]["message"]
    assert "victim.txt" in outcomes["torchscript"]["message"]  # loaded, ran, and was stopped at the write
    assert not hostile["created"].exists(), "the SavedModel wrote its file"
    assert outcomes["savedmodel"]["error"] == "UnsafeModel" and "created_by_model.txt" in outcomes["savedmodel"]["message"]
    assert not accepted, "the worker reached a socket on 127.0.0.1"
    assert outcomes["connect"]["error"] == "UnsafeModel" and "Operation not permitted" in outcomes["connect"]["message"]
    assert outcomes["read_outside"]["error"] == "UnsafeModel" and "Permission denied" in outcomes["read_outside"]["message"]
    assert outcomes["scratch_and_model"] == {"ok": "weights", "in_force": True}


def test_check_reports_the_containment_in_force(cli, fixtures_dir, tmp_path, needs_containment):
    result = cli("check", fixtures_dir / "torch_cnn.pt2", fixtures_dir / "torch_cnn.pt", "--data",
                 fixtures_dir / "digits_test_nchw.npz", "--rounds", "1", "--json", tmp_path / "r.json")
    assert result.code == 0, result.stderr
    containment = json.loads((tmp_path / "r.json").read_text())["containment"]
    assert containment["in_force"] and containment["network"] == "denied" and containment["landlock_abi"] >= 1
    assert containment["signals"] == "own process group only" and containment["environment"] == "allow-list"
    assert containment["memory_mb"] == 8192 and "subreaper" in containment["process_tree"]
    assert "contained: Landlock" in result.stdout


def test_without_containment_code_formats_need_trust(fixtures_dir, tmp_path):
    """Where no containment can be had, TorchScript is refused in one line unless trusted."""
    env = dict(os.environ, CONVREPAIR_CONTAIN="off")
    args = [sys.executable, "-m", "convrepair", "check", str(fixtures_dir / "torch_cnn.pt2"), str(fixtures_dir / "torch_cnn.pt"),
            "--data", str(fixtures_dir / "digits_test_nchw.npz"), "--rounds", "1", "--json", str(tmp_path / "r.json")]
    refused = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode == 2 and "--trust-model-code" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    trusted = subprocess.run([*args, "--trust-model-code"], capture_output=True, text=True, env=env, timeout=300)
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads((tmp_path / "r.json").read_text())["containment"]["in_force"] is False


def test_staged_outputs_publish_expected_names_and_rewrite_final_paths(tmp_path):
    from convrepair.contain.staging import StagedOutputs
    from convrepair.errors import BadInput

    final = tmp_path / "out" / "model.onnx"
    with StagedOutputs() as staged:
        place = staged.place(final)
        place.write_bytes(b"model")
        place.with_name("model.onnx.convrepair.json").write_text(json.dumps({"output": {"path": str(place)}}))
        assert staged.relocate({"path": str(place)}) == {"path": str(final)}
        staged.publish()
    assert final.read_bytes() == b"model"
    assert json.loads(final.with_name("model.onnx.convrepair.json").read_text()) == {"output": {"path": str(final)}}
    assert [p.name for p in final.parent.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(BadInput, match="already exists; pass --force"):  # refused before any work
        with StagedOutputs() as staged:
            staged.place(final)
    with StagedOutputs(force=True) as staged:
        staged.place(final).symlink_to("/etc/passwd")
        with pytest.raises(BadInput, match="not a regular file"):
            staged.publish()
    with StagedOutputs(force=True) as staged:
        os.link(tmp_path / "out" / "model.onnx.convrepair.json", staged.place(final))
        with pytest.raises(BadInput, match="hard-linked"):
            staged.publish()
    assert final.read_bytes() == b"model"


def test_staged_outputs_refuse_what_was_not_asked_for_and_touch_nothing(tmp_path):
    """Worker code wrote a key folder and a trust file beside the output: the whole publication
    fails in one line, the existing key and trust file are untouched, and not even the model moves."""
    from convrepair.contain.staging import StagedOutputs
    from convrepair.errors import BadInput

    out = tmp_path / "out"
    (out / "keys").mkdir(parents=True)
    (out / "keys" / "reviewer.key").write_text("the reviewer's key")
    (out / "trust.json").write_text("{}")
    final = out / "model.onnx"
    with StagedOutputs(force=True) as staged:
        staged.place(final).write_bytes(b"model")
        stage = staged.folder(out)
        (stage / "keys").mkdir()
        (stage / "trust.json").write_text('{"keys": "attacker"}')
        with pytest.raises(BadInput, match="'keys', which was not asked for"):
            staged.publish()
    assert (out / "keys" / "reviewer.key").read_text() == "the reviewer's key"
    assert (out / "trust.json").read_text() == "{}"
    assert not final.exists()
    with StagedOutputs(force=True) as staged:  # named by the caller, still never replaced
        staged.place(out / "trust.json").write_text("{}")
        with pytest.raises(BadInput, match="trust file or key"):
            staged.publish()


def test_forced_replacement_of_a_folder_is_one_atomic_exchange(tmp_path):
    from convrepair.contain.staging import StagedOutputs

    final = tmp_path / "model.savedmodel"
    (final / "variables").mkdir(parents=True)
    (final / "saved_model.pb").write_text("old")
    with StagedOutputs(force=True) as staged:
        place = staged.place(final)
        place.mkdir()
        (place / "saved_model.pb").write_text("new")
        staged.publish()
    assert (final / "saved_model.pb").read_text() == "new" and not (final / "variables").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.savedmodel"]


def test_containment_reports_exactly_what_holds():
    """Landlock ABI 4 stops TCP alone: without the seccomp filter the network is not 'denied', and
    nothing less than both is 'in force'."""
    from convrepair.contain import Containment

    tcp_only = Containment(4, False).to_json()
    assert tcp_only["network"] == "tcp denied, other sockets open" and tcp_only["in_force"] is False
    assert tcp_only["signals"] == "unrestricted"
    both = Containment(6, True, memory_mb=512).to_json()
    assert both["network"] == "denied" and both["in_force"] and both["signals"] == "own process group only"
    assert both["memory_mb"] == 512


# Runs the CLI under an outer seccomp filter that fails landlock_restrict_self, as a container's
# profile may: the kernel offers Landlock (the probe sees it) but the worker cannot enforce it.
# (landlock_restrict_self is 446 on every architecture.)
NO_LANDLOCK_RESTRICT = """
import ctypes, os, struct, sys
insn = lambda code, jt, jf, k: struct.pack("=HBBI", code, jt, jf, k)
program = insn(0x20, 0, 0, 0) + insn(0x15, 0, 1, 446) + insn(0x06, 0, 0, 0x00050000 | 1) + insn(0x06, 0, 0, 0x7FFF0000)
buffer = ctypes.create_string_buffer(program, len(program))
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Prog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0 and libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0
os.execv(sys.executable, [sys.executable, "-m", "convrepair", *sys.argv[1:]])
"""


def test_a_containment_that_cannot_hold_fails_closed_in_one_line(fixtures_dir, tmp_path, needs_containment):
    proc = subprocess.run([sys.executable, "-c", NO_LANDLOCK_RESTRICT, "check", str(fixtures_dir / "torch_cnn.pt2"),
                           str(fixtures_dir / "torch_cnn.pt2"), "--data", str(fixtures_dir / "digits_test_nchw.npz"),
                           "--rounds", "1"], capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "containment could not be put in place, nothing ran" in lines[0] and "landlock_restrict_self" in lines[0]
