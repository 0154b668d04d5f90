"""Find signed repair logs under a directory and tell their review status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convrepair.errors import BadInput
from convrepair.ledger import dsse
from convrepair.ledger.decisions import DECISIONS_DIR, decisions_for
from convrepair.ledger.log import LOG_PREDICATE


def list_logs(root: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(Path(root).rglob("*.dsse.json")):
        if DECISIONS_DIR in path.parts:
            continue
        try:
            envelope, _ = dsse.read_envelope(path)
            statement = dsse.statement_of(envelope, path)
        except BadInput:
            rows.append({"log": str(path), "status": "unreadable", "verdict": None})
            continue
        if statement.get("predicateType") != LOG_PREDICATE:
            continue
        predicate = statement["predicate"]
        decisions = decisions_for(path)
        status = decisions[0].decision if decisions else "pending"
        repair = predicate.get("repair", {})
        target = repair.get("target") or repair.get("model") or {}
        rows.append({
            "log": str(path),
            "status": status,
            "verdict": predicate.get("verdict"),
            "target": target.get("path"),
            "finished": predicate["job"]["finished"],
            "signed_by": envelope["signatures"][0]["keyid"][:16],
            "decided_by": decisions[0].reviewer[:16] if decisions else None,
        })
    return rows
