"""Signed logs for the ledger's fast tests: real keys and signatures over files of random bytes
(the ledger reads no model; digests and signatures are what it checks)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from conftest import run_cli
from convrepair.ledger import dsse


def make_keys(root: Path) -> Path:
    """service + alice, bob (reviewers) in root/keys, listed in root/trust.json (in-process: fast)."""
    from convrepair.ledger.keys import add_to_trust, init_keys, load_public_key

    for name, role in (("service", "service"), ("alice", "reviewer"), ("bob", "reviewer")):
        pair = init_keys(name, root / "keys")
        add_to_trust(root / "trust.json", load_public_key(pair.public), role, name)
    return root / "trust.json"


def record(root: Path, log: Path, verb: str = "approve", who: str = "alice") -> None:
    """A decision made in-process (setup; the CLI is what tests assert on)."""
    from convrepair.ledger.decide import decide as engine_decide
    from convrepair.ledger.keys import read_trust

    engine_decide(log, root / "keys" / f"{who}.key", "approved" if verb == "approve" else "rejected", "setup",
                  read_trust(root / "trust.json"))


def make_log(root: Path, job: str = "job", verdict: str = "repaired") -> Path:
    """A log signed by the service key over a source, a target, an output and its sidecar."""
    from convrepair.ledger.log import now, write_signed_log

    directory = root / job
    directory.mkdir(parents=True)
    for name, size in (("source.onnx", 3000), ("target.onnx", 3000), ("repaired.onnx", 4000)):
        (directory / name).write_bytes(os.urandom(size))
    (directory / "repaired.onnx.convrepair.json").write_text(json.dumps({"note": "not a sidecar the ledger reads"}))
    report = {"source": {"path": str(directory / "source.onnx")}, "target": {"path": str(directory / "target.onnx")},
              "output": {"path": str(directory / "repaired.onnx")}, "verdict": verdict}
    log = directory / "repaired.onnx.log.dsse.json"
    write_signed_log(report, log, root / "keys" / "service.key", now())
    return log


def forge_verdict(log: Path, verdict: str = "equivalent") -> None:
    """Edit the signed statement (the signature no longer covers it), written back canonically."""
    envelope, _ = dsse.read_envelope(log)
    statement = dsse.statement_of(envelope)
    statement["predicate"]["verdict"] = verdict
    envelope["payload"] = base64.b64encode(dsse.canonical(statement)).decode()
    log.write_bytes(dsse.canonical(envelope))


def decide(root: Path, log: Path, verb: str = "approve", who: str = "alice", *extra):
    text = ("--comment", "looks right") if verb == "approve" else ("--reason", "break rate too high")
    return run_cli(verb, log, "--key", root / "keys" / f"{who}.key", *text, *extra)


def verify(root: Path, log: Path, *extra):
    return run_cli("verify", log, "--trust", root / "trust.json", *extra)
