"""The decisions' transparency log: RFC 9162 Merkle proofs, signed-note checkpoints, and every way
of deleting, reordering, replacing or adding a decision — the newest included — caught by verify."""

from __future__ import annotations

import hashlib
import json

import pytest

from convrepair.ledger import checkpoint as notes
from convrepair.ledger import merkle
from ledger_helpers import decide, make_keys, make_log, record, verify


def _mth(entries: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 written out independently of the module under test."""
    if not entries:
        return hashlib.sha256(b"").digest()
    if len(entries) == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = 1
    while k * 2 < len(entries):
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(entries[:k]) + _mth(entries[k:])).digest()


def test_merkle_root_and_every_inclusion_and_consistency_proof_up_to_17_leaves():
    entries = [f"entry {i}".encode() for i in range(17)]
    for n in range(1, len(entries) + 1):
        leaves = [merkle.leaf_hash(e) for e in entries[:n]]
        root = merkle.root(leaves)
        assert root == _mth(entries[:n])
        for i in range(n):
            proof = merkle.inclusion_proof(i, leaves)
            assert merkle.verify_inclusion(i, n, leaves[i], proof, root)
            assert not merkle.verify_inclusion(i, n, merkle.leaf_hash(b"forged"), proof, root)
            if proof:
                assert not merkle.verify_inclusion(i, n, leaves[i], proof[:-1], root)
        for m in range(1, n + 1):
            proof = merkle.consistency_proof(m, leaves)
            assert merkle.verify_consistency(m, n, _mth(entries[:m]), root, proof)
            if m < n:  # a rewritten history is not consistent
                other = _mth([b"rewritten"] + entries[1:m])
                assert not merkle.verify_consistency(m, n, other, root, proof)


def test_merkle_matches_rfc6962_known_root():
    """The root of the empty tree and of the 8-leaf test vector of the CT reference implementations."""
    assert merkle.root([]).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    vector = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                         "606162636465666768696a6b6c6d6e6f")]
    assert merkle.root([merkle.leaf_hash(v) for v in vector]).hex() == \
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


def test_checkpoint_is_a_go_style_signed_note(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from convrepair.ledger.keys import PublicKey, keyid_of

    key = Ed25519PrivateKey.generate()
    keyid = keyid_of(key.public_key())
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    text = notes.sign(notes.Checkpoint("example.org/log", 5, b"\x07" * 32), key)
    body, signature_line = text.split("\n\n")
    assert body.split("\n") == ["example.org/log", "5", "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="]
    assert signature_line.startswith(f"\u2014 {keyid} ") and signature_line.endswith("\n")
    checkpoint, signer = notes.verify(text, {keyid: PublicKey(keyid, pem, "reviewer")})
    assert (checkpoint.size, signer) == (5, keyid)
    with pytest.raises(notes.NoteError, match="altered"):
        notes.verify(text.replace("\n5\n", "\n4\n"), {keyid: PublicKey(keyid, pem, "reviewer")})
    with pytest.raises(notes.NoteError, match="does not list"):
        notes.verify(text, {})


@pytest.fixture
def registry(tmp_path):
    """A registry root with trust.json, two logs; the first approved, the second rejected (newest)."""
    make_keys(tmp_path)
    first, second = make_log(tmp_path, "job-1"), make_log(tmp_path, "job-2")
    record(tmp_path, first, "approve")
    record(tmp_path, second, "reject", "bob")
    return tmp_path, first, second


def _entries(root):
    return sorted((root / "transparency" / "entries").iterdir())


def test_deleting_the_newest_decision_and_approving_afresh_fails(registry):
    """Hole 3 of issue 12: a rejection deleted and the log approved afresh passed verify --chain."""
    root, _, second = registry
    assert verify(root, second).code == 0
    assert json.loads(verify(root, second, "--json", "-").stdout)["status"] == "rejected"
    _entries(root)[-1].unlink()  # the rejection, newest entry of the log
    result = verify(root, second, "--require-approval", "--chain")
    assert result.code == 1 and "a decision was deleted" in result.stdout
    again = decide(root, second, "approve")
    assert again.code == 1 and "a decision was deleted" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert verify(root, second, "--require-approval", "--chain").code == 1


def test_reordered_replaced_or_smuggled_decisions_fail(registry, tmp_path_factory):
    import shutil

    root, first, _ = registry
    for tamper in ("reorder", "replace", "smuggle"):
        copy = tmp_path_factory.mktemp(tamper)
        shutil.copytree(root, copy, dirs_exist_ok=True)
        entries = _entries(copy)
        if tamper == "reorder":
            a, b = entries[0].read_bytes(), entries[1].read_bytes()
            entries[0].write_bytes(b)
            entries[1].write_bytes(a)
            expected = "replaced or reordered"
        elif tamper == "replace":  # a validly signed approval, written in place of bob's rejection
            record(copy, make_log(copy, "job-3"), "approve")
            newest = _entries(copy)[-1]
            entries[1].write_bytes(newest.read_bytes())
            newest.unlink()
            expected = "deleted"
        else:  # an entry added without a checkpoint that covers it
            (copy / "transparency" / "entries" / "000002-approved.dsse.json").write_bytes(entries[0].read_bytes())
            expected = "not covered by the signed checkpoint"
        result = verify(copy, copy / first.relative_to(root), "--require-approval")
        assert result.code == 1 and expected in result.stdout, (tamper, result.stdout)


def test_a_pinned_checkpoint_catches_a_rewritten_history(registry, tmp_path):
    """An insider with a reviewer key deletes the rejection, re-signs a shorter checkpoint and approves
    afresh: the log verifies again on its own (the stated limit), but not against a pinned checkpoint."""
    from convrepair.ledger.keys import load_private_key

    root, first, second = registry
    pin = tmp_path / "pipeline" / "checkpoint"
    first_use = verify(root, first, "--require-approval", "--checkpoint", pin)
    assert first_use.code == 0 and pin.read_text().split("\n")[1] == "2"
    third = make_log(root, "job-3")
    record(root, third, "approve")
    advanced = verify(root, third, "--require-approval", "--checkpoint", pin, "--json", "-")
    assert advanced.code == 0, advanced.stdout
    report = json.loads(advanced.stdout)
    assert report["checkpoint"]["size"] == 3 and report["inclusion"]["index"] == 2 and report["inclusion"]["ok"]
    assert pin.read_text().split("\n")[1] == "3"
    # the rewrite, with the log's own origin and a trusted key
    checkpoint_file = root / "transparency" / "checkpoint"
    old, _ = notes.parse(checkpoint_file.read_text())
    for entry in _entries(root)[1:]:
        entry.unlink()
    kept = merkle.leaf_hash(_entries(root)[0].read_bytes())
    alice = load_private_key(root / "keys" / "alice.key")
    checkpoint_file.write_text(notes.sign(notes.Checkpoint(old.origin, 1, merkle.root([kept])), alice))
    shrunk = verify(root, first, "--require-approval", "--checkpoint", pin)
    assert shrunk.code == 1 and "rolled back" in shrunk.stdout
    assert decide(root, second, "approve").code == 0 and decide(root, third, "approve").code == 0
    assert verify(root, second, "--require-approval", "--chain").code == 0  # undetectable without a pin
    rewritten = verify(root, second, "--require-approval", "--checkpoint", pin)
    assert rewritten.code == 1 and "history was rewritten" in rewritten.stdout
    assert pin.read_text().split("\n")[1] == "3" and notes.parse(pin.read_text())[0].root == old.root  # pin kept


def test_an_interrupted_append_is_finished_or_undone(registry):
    from convrepair.ledger.transparency import TransparencyLog

    root, first, _ = registry
    entries = root / "transparency" / "entries"
    stray = entries / ".pending-000002-approved.dsse.json"
    stray.write_bytes(b"{}")  # written, but the checkpoint was never replaced: undone
    with TransparencyLog(root / "transparency").locked():
        pass
    assert not stray.exists() and len(_entries(root)) == 2
    assert verify(root, first, "--require-approval").code == 0
