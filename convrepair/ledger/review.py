"""Find signed repair logs under a directory and tell their review status, each verified first:
a log whose signature, files or decisions do not verify is listed as `invalid`, with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convrepair.errors import BadInput
from convrepair.ledger import dsse
from convrepair.ledger.log import LOG_PREDICATE
from convrepair.ledger.transparency import TLOG_DIR
from convrepair.ledger.verify import verify


def list_logs(root: Path, trusted: dict, trust: Path | None = None) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(Path(root).rglob("*.dsse.json")):
        parts = path.relative_to(root).parts
        if TLOG_DIR in parts or any(part.startswith(".") for part in parts):
            continue
        try:
            envelope, _ = dsse.read_envelope(path)
            statement = dsse.statement_of(envelope, path)
        except BadInput as exc:
            rows.append({"log": str(path), "status": "invalid", "verdict": None, "reason": exc.one_line()})
            continue
        if statement.get("predicateType") != LOG_PREDICATE:
            continue
        predicate = statement.get("predicate") or {}
        decided = None
        try:
            result = verify(path, trusted, trust=trust)
            status, reason = (result.status, None) if result.ok else ("invalid", result.reason)
            decided = result.decided_by[:16] if result.ok and result.decided_by else None
        except BadInput as exc:
            status, reason = "invalid", exc.one_line()
        repair = _mapping(predicate.get("repair"))  # a forged log is listed too: nothing in it is trusted
        target = _mapping(repair.get("target") or repair.get("model"))
        rows.append({
            "log": str(path),
            "status": status,
            "verdict": predicate.get("verdict"),
            "target": target.get("path"),
            "finished": _mapping(predicate.get("job")).get("finished"),
            "signed_by": str(envelope["signatures"][0].get("keyid", ""))[:16] if envelope["signatures"] else "",
            "decided_by": decided,
            "reason": reason,
        })
    return rows


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
