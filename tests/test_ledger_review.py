"""Verified reviews (issue 12, hole 2): approve, reject, show and review verify a log against the
trust file before acting or listing it; a forged log is refused with one line and listed invalid."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from ledger_helpers import decide, forge_verdict, make_keys, make_log, verify


@pytest.fixture
def forged(tmp_path):
    make_keys(tmp_path)
    log = make_log(tmp_path)
    forge_verdict(log)
    return tmp_path, log


def _one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_forged_log_is_never_approved_promoted_shown_or_listed_as_fine(forged):
    root, log = forged
    for args in (("approve",), ("approve", "--promote", root / "approved"), ("reject",)):
        result = decide(root, log, *args[:1], "alice", *args[1:])
        assert result.code == 1, (args, result.stderr)
        line = _one_line(result)
        assert "refusing to" in line and "does not verify (the signed content was altered)" in line
    assert not (root / "transparency").exists() and not (root / "approved").exists()
    shown = run_cli("show", log)
    assert shown.code == 1 and "does not verify" in _one_line(shown) and shown.stdout == ""
    rows = json.loads(run_cli("review", "--registry", root, "--status", "all", "--json", "-").stdout)
    assert [row["status"] for row in rows] == ["invalid"] and "does not verify" in rows[0]["reason"]
    invalid = run_cli("review", "--registry", root, "--status", "invalid", "--json", "-")
    assert invalid.code == 0 and len(json.loads(invalid.stdout)) == 1


def _resign(root, log, name):
    """The log's statement signed again by another key."""
    from convrepair.ledger import dsse
    from convrepair.ledger.keys import keyid_of, load_private_key
    from convrepair.ledger.log import write_canonical

    key = load_private_key(root / "keys" / f"{name}.key")
    write_canonical(log, dsse.sign(dsse.statement_of(dsse.read_envelope(log)[0]), key, keyid_of(key.public_key())))
    return keyid_of(key.public_key())


def test_a_log_signed_by_an_unlisted_key_says_so(tmp_path):
    from convrepair.ledger.keys import init_keys

    make_keys(tmp_path)
    init_keys("mallory", tmp_path / "keys")  # a key of its own, in no trust file
    log = make_log(tmp_path)
    mallory = _resign(tmp_path, log, "mallory")
    result = decide(tmp_path, log, "approve")
    assert result.code == 1
    assert f"signed by key {mallory[:16]}… which the trust file does not list" in _one_line(result)


def test_a_log_signed_by_a_reviewer_key_names_the_role(tmp_path):
    make_keys(tmp_path)
    log = make_log(tmp_path)
    _resign(tmp_path, log, "bob")
    result = verify(tmp_path, log)
    assert result.code == 1 and "(bob), which the trust file lists as reviewer, not service" in result.stdout


def test_trust_defaults_to_the_registry_s_and_can_be_given(tmp_path):
    make_keys(tmp_path)
    log = make_log(tmp_path)
    moved = tmp_path / "elsewhere" / "trust.json"
    moved.parent.mkdir()
    (tmp_path / "trust.json").rename(moved)
    missing = decide(tmp_path, log, "approve")
    assert missing.code == 2 and "no trust.json" in _one_line(missing) and "--trust" in missing.stderr
    assert decide(tmp_path, log, "approve", "alice", "--trust", moved).code == 0
    listed = run_cli("review", "--registry", tmp_path, "--status", "approved", "--trust", moved, "--json", "-")
    assert listed.code == 0 and [row["status"] for row in json.loads(listed.stdout)] == ["approved"]
    assert run_cli("show", log, "--trust", moved, "--json", "-").code == 0


def test_a_key_the_trust_file_does_not_list_as_reviewer_cannot_decide(tmp_path):
    from convrepair.ledger.keys import init_keys

    make_keys(tmp_path)
    init_keys("eve", tmp_path / "keys")
    log = make_log(tmp_path)
    result = decide(tmp_path, log, "approve", "eve")
    assert result.code == 2 and "is not a reviewer (the trust file does not list it)" in _one_line(result)


def test_keys_init_adds_the_p256_half_to_an_old_key_and_never_overwrites(tmp_path):
    from convrepair.errors import BadInput
    from convrepair.ledger.keys import init_keys, load_public_key

    first = init_keys("carol", tmp_path)
    assert first.created == ("ed25519", "p256") and oct(first.p256_private.stat().st_mode & 0o777) == "0o600"
    ed25519 = first.private.read_bytes()
    first.p256_private.unlink()
    first.p256_public.unlink()  # a key made before model-signing: it gets only the missing half
    again = init_keys("carol", tmp_path)
    assert again.created == ("p256",) and again.keyid == first.keyid and first.private.read_bytes() == ed25519
    assert load_public_key(first.public).p256_pem == first.p256_public.read_text()
    with pytest.raises(BadInput, match="refusing to overwrite"):
        init_keys("carol", tmp_path)


@pytest.mark.parametrize("payload", [b"[1, 2]", b'{"predicateType": "https://convrepair.dev/repair-log/v1", "predicate": {"repair": "x", "job": 3}}'])
def test_a_log_of_any_shape_is_one_line_or_an_invalid_row_never_exit_70(tmp_path, payload):
    import base64

    from convrepair.ledger import dsse

    make_keys(tmp_path)
    log = make_log(tmp_path)
    envelope, _ = dsse.read_envelope(log)
    envelope["payload"] = base64.b64encode(payload).decode()
    log.write_bytes(dsse.canonical(envelope))
    approved = decide(tmp_path, log, "approve", "alice", "--promote", tmp_path / "repo")
    assert approved.code in (1, 2) and len(approved.stderr.strip().splitlines()) == 1, approved.stderr
    listed = run_cli("review", "--registry", tmp_path, "--status", "all", "--json", "-")
    assert listed.code == 0, listed.stderr
    assert [row["status"] for row in json.loads(listed.stdout)] in ([], ["invalid"])


def test_the_index_links_a_page_per_log_one_row_each_with_relative_paths(tmp_path):
    """Issue 22: links to every page, model/version/target/verdict/agreement/review columns, relative
    paths, one row for a log and its promoted copy, every log listed by default (not only pending)."""
    import re

    make_keys(tmp_path)
    first, second = make_log(tmp_path, "job-a"), make_log(tmp_path, "job-b")
    assert decide(tmp_path, first, "approve", "alice", "--promote", tmp_path / "repo").code == 0
    index = tmp_path / "site" / "index.html"
    result = run_cli("review", "--registry", tmp_path, "--html", index, "--json", "-")
    assert result.code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(row["path"], row["status"], row["promoted"]) for row in rows] == [
        ("job-a/repaired.onnx.log.dsse.json", "approved", ["repo/source/1"]),
        ("job-b/repaired.onnx.log.dsse.json", "pending", [])]
    page = index.read_text()
    assert str(tmp_path) not in page  # nothing absolute
    links = re.findall(r'<a href="([^"]+)">([^<]+)</a>', page)
    assert [text for _, text in links] == ["../job-a/repaired.onnx.log.dsse.json", "../job-b/repaired.onnx.log.dsse.json"]
    for href, _ in links:
        assert (index.parent / href).is_file() and "decision" in (index.parent / href).read_text().lower()
    headers = re.findall(r"<th>([^<]+)</th>", page)
    assert headers[:6] == ["model", "version", "target", "verdict", "held-out agreement", "review"]
    assert "repo/source/1" in page and page.count("<tr>") == 3  # the header and one row per log
