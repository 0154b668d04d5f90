"""Reviewer decisions as they are recorded: signed statements about one log's digest, each an
entry of the registry's transparency log (transparency.py; decide.py writes them). Each names
the sha256 of the entry before it (a hash chain inside the Merkle tree, for `verify --chain`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convrepair.errors import EXIT_DISCREPANT, BadInput, ConvrepairError
from convrepair.fsutil import sha256_file
from convrepair.ledger import dsse
from convrepair.ledger.transparency import Entry, LogState, TransparencyLog

DECISION_PREDICATE = "https://convrepair.dev/decision/v1"
GENESIS = "0" * 64


class Unverified(ConvrepairError):
    """A log, decision or transparency log that does not verify: the command refuses, exit 1."""

    exit_code = EXIT_DISCREPANT


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
    envelope: dict[str, Any]
    raw: bytes


def decision_of(entry: Entry) -> Decision:
    """The decision an entry records (its signature is checked by verify, not here), parsed from
    the bytes the transparency log read and hashed (never a second read of the file)."""
    envelope, raw = dsse.parse_envelope(entry.data, entry.path), entry.data
    statement = dsse.statement_of(envelope, entry.path)
    try:
        return _decision(entry, envelope, raw, statement.get("predicate") or {}, (statement.get("subject") or [{}])[0])
    except (ValueError, TypeError, AttributeError, KeyError, IndexError):
        raise BadInput("is not a decision statement", entry.path) from None


def _decision(entry: Entry, envelope: dict[str, Any], raw: bytes, predicate: dict, subject: dict) -> Decision:
    return Decision(entry.path, int(predicate.get("sequence", -1)), str(predicate.get("decision", "?")),
                    str(subject.get("name", "")), str((subject.get("digest") or {}).get("sha256", "")),
                    str(predicate.get("reviewer", "")), str(predicate.get("previous", "")),
                    str(predicate.get("comment") or predicate.get("reason") or ""), str(predicate.get("time", "")),
                    envelope, raw)


def decisions_about(state: LogState, log_digest: str) -> list[tuple[Entry, Decision]]:
    out = []
    for entry in state.entries:
        try:
            decision = decision_of(entry)
        except BadInput:
            continue
        if decision.log_sha256 == log_digest:
            out.append((entry, decision))
    return out


def decisions_dir(log_path: Path, trust: Path | None = None) -> Path:
    """Where the decisions about LOG_PATH are recorded: its registry's transparency log (layout.py)."""
    return TransparencyLog.for_log(log_path, trust).directory


def decisions_for(log_path: Path, trust: Path | None = None) -> list[Decision]:
    """The recorded decisions about this exact log, for display (unverified: `verify` checks them)."""
    state = TransparencyLog.for_log(log_path, trust).read({})
    return [decision for _, decision in decisions_about(state, sha256_file(Path(log_path)))]


def verify_chain(state: LogState | Path) -> tuple[bool, str]:
    """Every entry's sequence is its position and names the sha256 of the entry before it."""
    if not isinstance(state, LogState):
        state = TransparencyLog(Path(state)).read({})
    previous = GENESIS
    for position, entry in enumerate(state.entries):
        try:
            record = decision_of(entry)
        except BadInput as exc:
            return False, f"{entry.path.name}: {exc.one_line()}"
        if record.sequence != position:
            return False, f"{entry.path.name}: sequence {record.sequence}, expected {position} (a record is missing)"
        if record.previous != previous:
            return False, f"{entry.path.name}: previous digest does not match the entry before it"
        previous = hashlib.sha256(entry.data).hexdigest()
    return True, f"{len(state.entries)} decision(s), chain intact"
