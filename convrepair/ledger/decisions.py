"""Reviewer decisions: approvals and rejections as signed statements about one log's digest.

Decisions live in `decisions/` beside the logs, numbered; each carries the sha256 of the
decision before it, so the history is an append-only hash chain (`verify --chain`). A log is
approved by a reviewer key, never by the key that signed it; a log gets one decision.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convrepair.errors import BadInput
from convrepair.fsutil import atomic_output, sha256_file
from convrepair.ledger import dsse
from convrepair.ledger.keys import keyid_of, load_private_key
from convrepair.ledger.log import LOG_PREDICATE, STATEMENT_TYPE, now

DECISION_PREDICATE = "https://convrepair.dev/decision/v1"
DECISIONS_DIR = "decisions"
GENESIS = "0" * 64


@dataclass
class Decision:
    path: Path
    sequence: int
    decision: str
    log_name: str
    log_sha256: str
    reviewer: str
    previous: str
    text: str
    time: str


def decisions_dir(log_path: Path) -> Path:
    return Path(log_path).resolve().parent / DECISIONS_DIR


def read_decisions(directory: Path) -> list[Decision]:
    out = []
    for path in sorted(Path(directory).glob("*.dsse.json")) if Path(directory).is_dir() else []:
        envelope, _ = dsse.read_envelope(path)
        statement = dsse.statement_of(envelope, path)
        predicate = statement.get("predicate", {})
        subject = (statement.get("subject") or [{}])[0]
        out.append(Decision(path, int(predicate.get("sequence", -1)), predicate.get("decision", "?"), subject.get("name", ""),
                            subject.get("digest", {}).get("sha256", ""), predicate.get("reviewer", ""),
                            predicate.get("previous", ""), predicate.get("comment") or predicate.get("reason") or "",
                            predicate.get("time", "")))
    return sorted(out, key=lambda d: d.sequence)


def decisions_for(log_path: Path) -> list[Decision]:
    digest = sha256_file(Path(log_path))
    return [d for d in read_decisions(decisions_dir(log_path)) if d.log_sha256 == digest]


def log_signer(log_path: Path) -> str:
    envelope, _ = dsse.read_envelope(log_path)
    statement = dsse.statement_of(envelope, log_path)
    if statement.get("_type") != STATEMENT_TYPE or statement.get("predicateType") != LOG_PREDICATE:
        raise BadInput("is not a convrepair repair log", log_path)
    return envelope["signatures"][0]["keyid"]


def decide(log_path: Path, key_path: Path, decision: str, text: str, promote_to: Path | None = None) -> Decision:
    """Sign an approval or rejection of the log; optionally promote the approved artifact."""
    log_path = Path(log_path)
    signer = log_signer(log_path)
    key = load_private_key(key_path)
    reviewer = keyid_of(key.public_key())
    if reviewer == signer:
        raise BadInput("a log cannot be approved or rejected with the key that signed it; use a reviewer key", key_path)
    existing = decisions_for(log_path)
    if existing:
        raise BadInput(f"already {existing[0].decision} ({existing[0].path.name}); a log gets one decision", log_path)
    directory = decisions_dir(log_path)
    directory.mkdir(exist_ok=True)
    chain = read_decisions(directory)
    previous = sha256_file(chain[-1].path) if chain else GENESIS
    sequence = chain[-1].sequence + 1 if chain else 0
    predicate: dict[str, Any] = {"decision": decision, "sequence": sequence, "previous": previous,
                                 "reviewer": reviewer, "time": now()}
    predicate["comment" if decision == "approved" else "reason"] = text
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": log_path.name, "digest": {"sha256": sha256_file(log_path)}}],
        "predicateType": DECISION_PREDICATE,
        "predicate": predicate,
    }
    envelope = dsse.sign(statement, key, reviewer)
    path = directory / f"{sequence:06d}-{decision}.dsse.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # a concurrent decision cannot overwrite
    with os.fdopen(fd, "wb") as handle:
        handle.write(dsse.canonical(envelope))
    record = read_decisions(directory)[-1]
    if decision == "approved" and promote_to is not None:
        promote(log_path, record, Path(promote_to))
    return record


def promote(log_path: Path, decision: Decision, destination: Path) -> Path:
    """Copy the approved output (with its sidecar), the log and the decision atomically to DESTINATION."""
    envelope, _ = dsse.read_envelope(log_path)
    files = dsse.statement_of(envelope)["predicate"]["files"]
    base = Path(log_path).resolve().parent
    outputs = [f for f in files if f["role"] in ("output", "output_sidecar")]
    if not outputs:
        raise BadInput("the log names no output to promote (nothing was repaired)", log_path)
    with atomic_output(destination) as tmp:
        tmp.mkdir(parents=True)
        for entry in outputs:
            source = base / entry["name"]
            shutil.copy2(source, tmp / Path(entry["name"]).name)
        shutil.copy2(log_path, tmp / Path(log_path).name)
        (tmp / DECISIONS_DIR).mkdir()
        shutil.copy2(decision.path, tmp / DECISIONS_DIR / decision.path.name)
    return destination


def verify_chain(directory: Path) -> tuple[bool, str]:
    chain = read_decisions(directory)
    previous = GENESIS
    for index, record in enumerate(chain):
        if record.sequence != index:
            return False, f"{record.path.name}: sequence {record.sequence}, expected {index} (a record is missing)"
        if record.previous != previous:
            return False, f"{record.path.name}: previous digest does not match {chain[index - 1].path.name if index else 'genesis'}"
        previous = sha256_file(record.path)
    return True, f"{len(chain)} decision(s), chain intact"
