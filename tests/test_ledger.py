"""Signed repair logs, reviewer decisions and `convrepair verify`: tampering never goes unnoticed."""

from __future__ import annotations

import json
import os
import shutil

import pytest

import faults as fi
from convrepair.convert import convert
from convrepair.ledger import dsse
from convrepair.ledger.log import validate_log
from convrepair.plugins import default_registry
from convrepair.sidecar import read_sidecar, write_sidecar

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def signed(fixtures_dir, tmp_path_factory):
    """Keys, a trust file, and a signed log of a real repair, made once through the CLI."""
    from conftest import run_cli

    root = tmp_path_factory.mktemp("ledger")
    for name, role in (("service", "service"), ("alice", "reviewer"), ("bob", "reviewer")):
        result = run_cli("keys", "init", "--name", name, "--dir", root / "keys", "--trust", root / "trust.json", "--role", role)
        assert result.code == 0, result.stderr
        assert "PRIVATE KEY" not in result.stdout + result.stderr
    clean = convert(default_registry(), fixtures_dir / "keras_cnn.keras", "onnx", out_dir=root / "converted").output.path
    broken = fi.inject(clean, root / "broken.onnx", fi.asymmetric_pads, "conv2")
    write_sidecar(broken, read_sidecar(clean))
    result = run_cli("repair", fixtures_dir / "keras_cnn.keras", broken, "--out", root / "job" / "repaired.onnx",
                     "--data", fixtures_dir / "digits_all_nhwc.npz", "--sign-key", root / "keys" / "service.key")
    assert result.code == 0, result.stderr
    return root


@pytest.fixture
def ledger(signed, tmp_path):
    """A scratch copy to tamper with."""
    shutil.copytree(signed, tmp_path / "l", symlinks=True)
    root = tmp_path / "l"
    return root, root / "job" / "repaired.onnx.log.dsse.json"


def _verify(cli, root, log, *extra):
    return cli("verify", log, "--trust", root / "trust.json", *extra)


def _resign_variant(root, source_log, target_log, job_id):
    """Another valid log: the same statement with another job id, signed by the service key."""
    from convrepair.ledger.keys import keyid_of, load_private_key
    from convrepair.ledger.log import write_canonical

    envelope, _ = dsse.read_envelope(source_log)
    statement = dsse.statement_of(envelope)
    statement["predicate"]["job"]["id"] = job_id
    key = load_private_key(root / "keys" / "service.key")
    write_canonical(target_log, dsse.sign(statement, key, keyid_of(key.public_key())))


def _approve(cli, root, log, who="alice", *extra):
    return cli("approve", log, "--key", root / "keys" / f"{who}.key", "--comment", "looks right", *extra)


def test_keys_are_private_and_never_overwritten(cli, signed):
    assert oct(os.stat(signed / "keys" / "service.key").st_mode & 0o777) == "0o600"
    again = cli("keys", "init", "--name", "service", "--dir", signed / "keys")
    assert again.code == 2 and "refusing to overwrite" in again.stderr


def test_log_is_an_in_toto_statement_that_follows_the_shipped_schema(ledger):
    _, log = ledger
    envelope, raw = dsse.read_envelope(log)
    statement = dsse.statement_of(envelope)
    validate_log(statement)
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    names = {s["name"] for s in statement["subject"]}
    assert "repaired.onnx" in names and any(n.endswith("broken.onnx") for n in names)
    assert statement["predicate"]["repair"]["verdict"] == "repaired"
    assert raw == dsse.canonical(envelope)


def test_the_full_review_cycle(cli, ledger):
    root, log = ledger
    assert _verify(cli, root, log).code == 0
    pending = cli("review", "--registry", root, "--json")
    assert [row["status"] for row in json.loads(pending.stdout)] == ["pending"]
    missing = _verify(cli, root, log, "--require-approval")
    assert missing.code == 1 and "no valid approval" in missing.stdout
    promoted = root / "approved" / "keras_cnn" / "1"  # a Triton version named after the source: REPO/MODEL/VERSION/model.onnx
    assert _approve(cli, root, log, "alice", "--promote", root / "approved").code == 0
    assert _verify(cli, root, log, "--require-approval", "--chain").code == 0
    assert json.loads(cli("review", "--registry", root, "--status", "approved", "--json").stdout)[0]["status"] == "approved"
    promoted_log = promoted / "convrepair" / log.name
    assert _verify(cli, root, promoted_log, "--require-approval").code == 0
    # one byte of the promoted model changes (in a scratch copy): verify fails closed
    model = promoted / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    failed = _verify(cli, root, promoted_log, "--require-approval", "--json")
    assert failed.code == 1
    assert "repaired.onnx" in json.loads(failed.stdout)["reason"] and "changed" in json.loads(failed.stdout)["reason"]


def test_changed_log_byte_fails(cli, ledger):
    root, log = ledger
    raw = bytearray(log.read_bytes())
    index = raw.index(b'"payload":"') + 40
    raw[index] = ord("A") if raw[index] != ord("A") else ord("B")
    log.write_bytes(bytes(raw))
    result = _verify(cli, root, log)
    assert result.code == 1 and "FAILED" in result.stdout


def test_whitespace_change_in_the_log_fails_too(cli, ledger):
    root, log = ledger
    log.write_bytes(log.read_bytes().replace(b'","', b'", "', 1))
    result = _verify(cli, root, log)
    assert result.code == 1 and "altered" in result.stdout


def test_changed_approval_byte_fails(cli, ledger):
    root, log = ledger
    assert _approve(cli, root, log).code == 0
    approval = next((root / "transparency" / "entries").glob("*.dsse.json"))
    raw = bytearray(approval.read_bytes())
    index = raw.index(b'"sig":"') + 12
    raw[index] = ord("A") if raw[index] != ord("A") else ord("B")
    approval.write_bytes(bytes(raw))
    result = _verify(cli, root, log, "--require-approval")
    assert result.code == 1 and "decision" in result.stdout


def test_approval_swapped_onto_another_log_fails(cli, ledger, tmp_path):
    root, log = ledger
    assert _approve(cli, root, log).code == 0
    other = shutil.copytree(root, tmp_path / "other")
    other_log = other / "job" / log.name
    # a different, validly signed log takes the approved one's place, approval and all
    _resign_variant(other, other_log, other_log, "another-job")
    for extra in ((), ("--require-approval",)):
        result = _verify(cli, other, other_log, *extra)
        assert result.code == 1 and "different log" in result.stdout


def test_approving_with_the_service_key_is_refused(cli, ledger):
    root, log = ledger
    result = _approve(cli, root, log, "service")
    assert result.code == 2 and "key that signed it" in result.stderr
    assert not (root / "transparency" / "entries").exists() or not list((root / "transparency" / "entries").iterdir())


def test_approve_twice_and_approve_after_reject_are_refused(cli, ledger):
    root, log = ledger
    assert cli("reject", log, "--key", root / "keys" / "bob.key", "--reason", "break rate too high").code == 0
    again = _approve(cli, root, log, "alice")
    assert again.code == 2 and "already rejected" in again.stderr
    assert _verify(cli, root, log, "--require-approval").code == 1
    assert len(list((root / "transparency" / "entries").iterdir())) == 1


def test_unknown_key_fails(cli, ledger):
    root, log = ledger
    trust = json.loads((root / "trust.json").read_text())
    trust["keys"] = [k for k in trust["keys"] if k["role"] != "service"]
    (root / "trust.json").write_text(json.dumps(trust))
    result = _verify(cli, root, log)
    assert result.code == 1 and "which the trust file does not list" in result.stdout


def test_loose_private_key_permissions_are_refused(cli, ledger):
    root, log = ledger
    os.chmod(root / "keys" / "alice.key", 0o644)
    result = _approve(cli, root, log, "alice")
    assert result.code == 2 and "chmod 600" in result.stderr
    assert "PRIVATE KEY" not in result.stdout + result.stderr


def test_corrupted_log_json_is_a_clear_error(cli, ledger):
    root, log = ledger
    log.write_text(log.read_text()[:100])
    result = _verify(cli, root, log)
    assert result.code == 2 and "not a DSSE envelope" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_decision_chain_detects_a_removed_record(cli, ledger, tmp_path):
    root, log = ledger
    assert _approve(cli, root, log).code == 0
    # a second log in the same place, decided after the first: the chain links them
    second = log.with_name("second.log.dsse.json")
    _resign_variant(root, log, second, "second-job")
    assert cli("reject", second, "--key", root / "keys" / "bob.key", "--reason", "duplicate").code == 0
    assert _verify(cli, root, second, "--chain").code == 0
    first = sorted((root / "transparency" / "entries").iterdir())[0]
    first.unlink()
    result = _verify(cli, root, second, "--chain")
    assert result.code == 1 and "decision chain" in result.stdout and "deleted" in result.stdout


def test_show_renders_terminal_and_a_self_contained_html_page(cli, ledger, tmp_path):
    root, log = ledger
    result = cli("show", log, "--html", tmp_path / "log.html")
    assert result.code == 0, result.stderr
    assert "restore_attribute" in result.stdout and "hyperparameter" in result.stdout
    page = (tmp_path / "log.html").read_text()
    # self-contained: nothing is fetched (XML namespace names in inline SVG are names, not fetches)
    import re

    assert "<svg" in page and not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|@import""", page)
