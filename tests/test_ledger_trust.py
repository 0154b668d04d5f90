"""Keys with roles (issue 19, item 6): checkpoints only from reviewer or log keys, signatures over
the bytes received, one read of each file, promotion that checks every copy against the logged
digest before it signs, the rollback limit said out loud, no soft pass for the model signature."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from conftest import run_cli
from convrepair.ledger import checkpoint as notes
from convrepair.ledger import merkle
from ledger_helpers import decide, make_keys, make_log, record, verify


@pytest.fixture
def registry(tmp_path):
    """trust.json, job-1 approved by alice, job-2 rejected by bob (the newest decision)."""
    make_keys(tmp_path)
    first, second = make_log(tmp_path, "job-1"), make_log(tmp_path, "job-2")
    record(tmp_path, first, "approve")
    record(tmp_path, second, "reject", "bob")
    return tmp_path, first, second


def _truncate_and_resign(root: Path, key_name: str) -> None:
    """Drop the trailing rejection and sign the shorter checkpoint with KEY_NAME's key."""
    from convrepair.ledger.keys import load_private_key

    checkpoint_file = root / "transparency" / "checkpoint"
    old, _ = notes.parse(checkpoint_file.read_text())
    entries = sorted((root / "transparency" / "entries").iterdir())
    entries[-1].unlink()
    kept = [merkle.leaf_hash(p.read_bytes()) for p in entries[:-1]]
    key = load_private_key(root / "keys" / f"{key_name}.key")
    checkpoint_file.write_text(notes.sign(notes.Checkpoint(old.origin, len(kept), merkle.root(kept)), key))


def test_the_service_key_cannot_truncate_the_decision_log(registry):
    """The service key lives where untrusted models run: a checkpoint it signs is refused."""
    root, _, second = registry
    _truncate_and_resign(root, "service")
    result = verify(root, second, "--json", "-")
    assert result.code == 1
    assert "lists as service; only reviewer or log keys may sign checkpoints" in json.loads(result.stdout)["reason"]
    approve = decide(root, second, "approve")  # the rejection is gone, but nobody may append to that log
    assert approve.code == 1 and "only reviewer or log keys" in approve.stderr


def test_a_dedicated_log_key_may_sign_checkpoints(registry):
    root, first, _ = registry
    made = run_cli("keys", "init", "--name", "tlog", "--dir", root / "keys", "--trust", root / "trust.json", "--role", "log")
    assert made.code == 0, made.stderr
    assert {k["role"] for k in json.loads((root / "trust.json").read_text())["keys"]} == {"service", "reviewer", "log"}
    from convrepair.ledger.keys import load_private_key

    checkpoint_file = root / "transparency" / "checkpoint"
    old, _ = notes.parse(checkpoint_file.read_text())
    checkpoint_file.write_text(notes.sign(old, load_private_key(root / "keys" / "tlog.key")))
    result = verify(root, first, "--require-approval", "--json", "-")
    assert result.code == 0, result.stdout
    from convrepair.ledger.keys import keyid_of

    assert json.loads(result.stdout)["checkpoint"]["signed_by"] == keyid_of(load_private_key(root / "keys" / "tlog.key").public_key())


def test_a_checkpoint_is_verified_over_the_bytes_received(registry):
    """Bits that base64 ignores, or a line after the root, are not covered by a re-serialisation."""
    root, first, _ = registry
    checkpoint_file = root / "transparency" / "checkpoint"
    text = checkpoint_file.read_text()
    body, signatures = text.split("\n\n")
    lines = body.split("\n")
    last = lines[2][-2]  # 32 bytes: 43 characters and '=', the last character's two low bits unused
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    twin = alphabet[alphabet.index(last) ^ 1]
    import base64

    assert base64.b64decode(lines[2][:-2] + twin + "=") == base64.b64decode(lines[2])
    checkpoint_file.write_text("\n".join([lines[0], lines[1], lines[2][:-2] + twin + "="]) + "\n\n" + signatures)
    changed = verify(root, first, "--json", "-")
    assert changed.code == 1 and "does not verify (the checkpoint was altered)" in json.loads(changed.stdout)["reason"]
    checkpoint_file.write_text(body + "\nan unsigned line\n\n" + signatures)
    extra = verify(root, first, "--json", "-")
    assert extra.code == 1 and "line(s) after the root hash" in json.loads(extra.stdout)["reason"]


def test_verify_hashes_the_bytes_it_verified(registry):
    """A log served differently on each read (a FIFO): the pending job-2 log on the first read, the
    approved job-1 log on any second read. The approval must not be lent to the pending log."""
    from convrepair.ledger.keys import read_trust
    from convrepair.ledger.verify import verify as run_verify

    root, first, second = registry
    third = make_log(root, "job-3")  # pending
    pending, approved = third.read_bytes(), first.read_bytes()
    third.unlink()
    os.mkfifo(third)
    served = []

    def serve():
        import time

        for data in (pending, approved):
            try:
                with open(third, "wb") as handle:  # blocks until a reader opens it
                    handle.write(data)
            except OSError:  # the release below: nobody read a second time
                return
            served.append(len(data))
            time.sleep(0.5)  # the first reader sees the end of its file before the next one is served

    writer = threading.Thread(target=serve, daemon=True)
    writer.start()
    result = run_verify(third, read_trust(root / "trust.json"), require_approval=True)
    assert not result.ok and result.status == "pending", result.to_json()
    assert "no valid approval" in result.reason
    import hashlib

    assert result.sha256 == hashlib.sha256(pending).hexdigest()
    import time

    deadline = time.monotonic() + 5
    while writer.is_alive() and time.monotonic() < deadline:  # release the writer waiting for a second reader
        fd = os.open(third, os.O_RDONLY | os.O_NONBLOCK)
        time.sleep(0.1)
        os.close(fd)
    assert served == [len(pending)] or served == [len(pending), len(approved)]


def test_promotion_refuses_a_file_swapped_between_verify_and_copy(tmp_path):
    from convrepair.errors import BadInput
    from convrepair.ledger.decide import decide as engine_decide
    from convrepair.ledger.keys import read_trust
    from convrepair.ledger.promote import plan as make_plan

    make_keys(tmp_path)
    log = make_log(tmp_path)
    swapped = os.urandom(4000)

    def plan(verified):
        made = make_plan(log, tmp_path / "repo", tmp_path / "keys" / "alice.key", verified=verified)
        (log.parent / "repaired.onnx").write_bytes(swapped)  # after verify, before the copy
        return made

    with pytest.raises(BadInput, match="changed since the log was verified") as raised:
        engine_decide(log, tmp_path / "keys" / "alice.key", "approved", "ok", read_trust(tmp_path / "trust.json"), plan)
    assert raised.value.exit_code == 1
    assert not (tmp_path / "repo" / "source" / "1").exists()
    assert [p.name for p in (tmp_path / "repo" / "source").iterdir() if p.name.endswith(".tmp")] == []
    entries = tmp_path / "transparency" / "entries"
    assert not entries.exists() or list(entries.iterdir()) == []  # nothing approved, nothing signed


def test_require_approval_without_a_pin_says_rollback_is_not_covered(registry, tmp_path):
    root, first, _ = registry
    result = verify(root, first, "--require-approval", "--json", "-")
    assert result.code == 0
    report = json.loads(result.stdout)
    assert report["rollback_covered"] is False and any("rollback" in w for w in report["warnings"])
    notes_ = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes_) == 1 and "--checkpoint" in notes_[0]
    pin = tmp_path.parent / f"{tmp_path.name}-pin" / "checkpoint"  # outside the registry
    pinned = verify(root, first, "--require-approval", "--checkpoint", pin, "--json", "-")
    report = json.loads(pinned.stdout)
    assert pinned.code == 0 and report["rollback_covered"] is True and report["warnings"] == [] and pin.is_file()
    inside = verify(root, first, "--require-approval", "--checkpoint", root / "pin", "--json", "-")
    assert any("inside the registry" in w for w in json.loads(inside.stdout)["warnings"])


def test_no_soft_pass_without_a_model_signing_key_and_digests_in_hex(tmp_path):
    make_keys(tmp_path)
    log = make_log(tmp_path)
    approved = decide(tmp_path, log, "approve", "alice", "--promote", tmp_path / "repo")
    assert approved.code == 0, approved.stderr
    version = tmp_path / "repo" / "source" / "1"  # named after the source model, not the output
    assert verify(tmp_path, version, "--require-approval").code == 0  # the version folder is accepted
    trust = json.loads((tmp_path / "trust.json").read_text())
    stripped = tmp_path / "stripped.json"
    stripped.write_text(json.dumps({"keys": [{k: v for k, v in e.items() if k != "model_signing_public_key"}
                                             for e in trust["keys"]]}))
    result = run_cli("verify", version, "--trust", stripped, "--json", "-")
    assert result.code == 1 and "no model-signing (P-256) key" in json.loads(result.stdout)["reason"]
    data = bytearray((version / "model.onnx").read_bytes())
    data[7] ^= 0x01
    (version / "model.onnx").write_bytes(bytes(data))
    failed = verify(tmp_path, version)
    assert failed.code == 1 and "Hash mismatch for 'model.onnx'" in failed.stdout
    import re

    # no bytes repr: b'\x..' (a hex digest that ends in "b" before a quote is no bytes literal)
    assert not re.search(r"\\x[0-9a-f]{2}", failed.stdout) and not re.search(r"\bb['\"]", failed.stdout)
    assert re.search(r"Expected 'sha256:[0-9a-f]{64}'", failed.stdout)


def test_a_missing_key_file_says_how_to_make_one(tmp_path):
    make_keys(tmp_path)
    log = make_log(tmp_path)
    result = decide(tmp_path, log, "approve", "carol")
    assert result.code == 2 and "no such key file; create it with `convrepair keys init --name carol" in result.stderr
