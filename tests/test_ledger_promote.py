"""Promotion that verifies (issue 12, hole 4; issue 13, item 6), end to end through the real daemon:
a job's signed log names `repaired/model.onnx`; `approve --promote` writes a Triton version whose
copied log verifies with --require-approval, and whose OpenSSF model-signing bundle the
`model_signing` CLI accepts; one changed byte fails both."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import run_cli
from ledger_helpers import make_keys, verify

pytestmark = pytest.mark.slow
CONFIG = 'targets = ["onnx"]\ndata = "data.npz"\nlenses = "none"\n[repair]\npolicy = "restore"\n'


def _model_signing_verify(version_dir, public_key) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model_signing", "verify", "key", str(version_dir),
                           "--signature", str(version_dir / "convrepair" / "model.sig"), "--public_key", str(public_key)],
                          capture_output=True, text=True, timeout=120)


def test_a_daemon_result_promoted_verifies_and_fails_after_one_byte(fixtures_dir, tmp_path):
    make_keys(tmp_path)  # tmp_path/trust.json sits above the registry: the registry's trust file
    model = tmp_path / "registry" / "digits"
    (model / "1").mkdir(parents=True)
    (model / "convrepair.toml").write_text(CONFIG)
    shutil.copy(fixtures_dir / "digits_test_nchw.npz", model / "data.npz")
    shutil.copy(fixtures_dir / "torch_cnn.pt2", model / "1" / "model.pt2")
    (model / "1" / "_COMPLETE").touch()
    daemon = run_cli("daemon", tmp_path / "registry", "--state-dir", tmp_path / "state", "--once", "--quiet-seconds", "0",
                     "--no-http", "--sign-key", tmp_path / "keys" / "service.key", timeout=600)
    assert daemon.code == 0, daemon.stdout + daemon.stderr
    log = model / "1" / "convrepair" / "onnx" / "repair.log.dsse.json"
    assert verify(tmp_path, log).code == 0
    from convrepair.ledger import dsse

    logged = {f["name"] for f in dsse.statement_of(dsse.read_envelope(log)[0])["predicate"]["files"] if f["role"] == "output"}
    assert logged == {"repaired/model.onnx"}  # the daemon's layout, which a flat copy used to lose

    approved = run_cli("approve", log, "--key", tmp_path / "keys" / "alice.key", "--comment", "held-out equivalent",
                       "--promote", tmp_path / "repo", "--json", "-")
    assert approved.code == 0, approved.stderr
    version = tmp_path / "repo" / "digits" / "1"  # the registry's model and version, Triton layout
    assert json.loads(approved.stdout)["promoted"] == str(version)
    assert (version / "model.onnx").is_file() and (version / "model.onnx.convrepair.json").is_file()
    promoted_log = version / "convrepair" / "repair.log.dsse.json"
    result = verify(tmp_path, promoted_log, "--require-approval", "--chain", "--json", "-")
    assert result.code == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["checkpoint"]["size"] == 1 and report["inclusion"]["ok"] and report["status"] == "approved"
    assert {c["check"] for c in report["checks"] if c["ok"]} >= {"promotion statement", "model signature", "file repaired/model.onnx"}
    alice_p256 = tmp_path / "keys" / "alice.p256.pub"
    accepted = _model_signing_verify(version, alice_p256)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert _model_signing_verify(version, tmp_path / "keys" / "bob.p256.pub").returncode != 0  # another key: no

    data = bytearray((version / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (version / "model.onnx").write_bytes(bytes(data))
    failed = verify(tmp_path, promoted_log, "--require-approval", "--json", "-")
    assert failed.code == 1
    reason = json.loads(failed.stdout)["reason"]
    assert "repaired/model.onnx: changed" in reason and "model signature" in reason
    rejected = _model_signing_verify(version, alice_p256)
    assert rejected.returncode != 0 and "model.onnx" in rejected.stdout + rejected.stderr
