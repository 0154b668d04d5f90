"""Find signed repair logs under a directory and tell their review status, each verified first:
a log whose signature, files or decisions do not verify is listed as `invalid`, with the reason.
One row per log: a promoted version's copy of it (the same bytes) is named in the row's `promoted`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from convrepair.errors import BadInput
from convrepair.ledger import dsse
from convrepair.ledger.log import LOG_PREDICATE
from convrepair.ledger.promote import PROMOTION_FILE
from convrepair.ledger.transparency import TLOG_DIR
from convrepair.ledger.verify import verify


def _candidates(root: Path) -> list[Path]:
    """Every *.dsse.json under ROOT, not descending into hidden folders (.venv, .git, a promotion
    in progress) or transparency logs."""
    found = []
    for directory, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith(".") and f != TLOG_DIR)
        found += [Path(directory) / name for name in sorted(files) if name.endswith(".dsse.json") and not name.startswith(".")]
    return found


def list_logs(root: Path, trusted: dict, trust: Path | None = None) -> list[dict[str, Any]]:
    """One row per log: a promoted version's copy of a log (the same bytes) is named in that log's
    row as `promoted`, not listed again; a promoted copy whose log is not under ROOT is the row."""
    root = Path(root)
    rows: list[dict[str, Any]] = []
    groups: dict[str, list[tuple[Path, dict, dict, bool]]] = {}
    for path in _candidates(root):
        try:
            envelope, raw = dsse.read_envelope(path)
            statement = dsse.statement_of(envelope, path)
        except BadInput as exc:
            rows.append({"log": str(path), "path": os.path.relpath(path, root), "status": "invalid", "verdict": None,
                         "reason": exc.one_line(), "promoted": []})
            continue
        if statement.get("predicateType") != LOG_PREDICATE:
            continue
        promoted_copy = (path.parent / PROMOTION_FILE).is_file()
        groups.setdefault(hashlib.sha256(raw).hexdigest(), []).append((path, envelope, statement, promoted_copy))
    for digest, found in groups.items():
        copies = [os.path.relpath(path.parent.parent, root) for path, _, _, promoted in found if promoted]
        originals = [item for item in found if not item[3]] or found[:1]
        for number, (path, envelope, statement, _) in enumerate(originals):
            row = _row(path, root, envelope, statement, digest, trusted, trust)
            row["promoted"] = copies if number == 0 else []
            rows.append(row)
    return sorted(rows, key=lambda row: row["path"])


def _row(path: Path, root: Path, envelope: dict, statement: dict, digest: str, trusted: dict, trust: Path | None) -> dict[str, Any]:
    from convrepair.ledger.promote import _registry_place

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
    files = [f for f in predicate.get("files") or [] if isinstance(f, dict) and isinstance(f.get("name"), str)
             and isinstance(f.get("role"), str)]
    try:
        model, version = _registry_place(path, files)
    except (ValueError, TypeError):
        model, version = "model", "1"
    parts = path.resolve().parent.parts
    daemon = len(parts) >= 4 and parts[-2] == "convrepair"
    return {
        "log": str(path),
        "path": os.path.relpath(path, root),
        "sha256": digest,
        "status": status,
        "verdict": predicate.get("verdict"),
        "model": model,
        "version": version if daemon else None,
        "target_name": parts[-1] if daemon else (Path(str(target.get("path"))).name if target.get("path") else None),
        "agreement_before": _mapping(repair.get("check_before_held_out")).get("label_agreement"),
        "agreement_after": _mapping(repair.get("check_after")).get("label_agreement"),
        "target": target.get("path"),
        "finished": _mapping(predicate.get("job")).get("finished"),
        "signed_by": str(envelope["signatures"][0].get("keyid", ""))[:16] if envelope["signatures"] else "",
        "decided_by": decided,
        "reason": reason,
        "promoted": [],
    }


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
