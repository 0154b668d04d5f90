"""`convrepair verify`: what a deployment pipeline runs. Fails closed: every check must hold.

Checks: the log's bytes are the canonical envelope that was signed; its signature verifies with a
trusted service key; every file it names still has its digest (outputs must be present; inputs
are checked where present), found through the signed promotion statement in a promoted version;
the registry's transparency log matches its signed checkpoint (nothing deleted, reordered,
replaced or added behind its back); every decision about this log is included in that tree,
verifies with a trusted reviewer key other than the signer and names this exact log; with
--require-approval, an approval exists and no rejection; with --chain, the entries' hash chain
holds; with a pinned checkpoint, the log is a consistent extension of it (RFC 9162 proof).

The log is read once: its signature is checked over those bytes, and the digest decisions are
looked up by is the sha256 of the same bytes (a file swapped between two reads cannot split them).
Without a pinned checkpoint a rollback of the whole decision store is not caught; the result says
so (`rollback_covered`, `warnings`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convrepair.errors import BadInput
from convrepair.fsutil import atomic_output, sha256_file
from convrepair.ledger import checkpoint as notes
from convrepair.ledger import dsse
from convrepair.ledger.decisions import decisions_about, decision_of, verify_chain
from convrepair.ledger.layout import log_name
from convrepair.ledger.log import LOG_PREDICATE
from convrepair.ledger.transparency import TransparencyLog

ROLLBACK_NOT_COVERED = ("a rollback of the whole decision store is not covered without a pinned checkpoint: "
                        "pass --checkpoint PIN (a path the registry's writers cannot write)")


@dataclass
class Verification:
    log: str
    ok: bool = True
    checks: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: dict[str, Any] | None = None
    inclusion: dict[str, Any] | None = None
    status: str = "pending"  # pending | approved | rejected, from the decisions that verify
    decided_by: str | None = None
    sha256: str | None = None  # of the bytes that were verified
    signer: str | None = None  # keyid of the service signature that verified
    rollback_covered: bool = False  # a pinned checkpoint was checked (a store rolled back whole is caught)
    warnings: list[str] = field(default_factory=list)
    raw: bytes = field(default=b"", repr=False)  # the log's bytes as verified (promotion copies these)
    statement: dict[str, Any] = field(default_factory=dict, repr=False)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append({"check": name, "ok": ok, "detail": detail})
        self.ok = self.ok and ok

    @property
    def reason(self) -> str:
        failed = [c for c in self.checks if not c["ok"]]
        return "; ".join(f"{c['check']}: {c['detail']}" for c in failed) or "all checks hold"

    def to_json(self) -> dict[str, Any]:
        return {"log": self.log, "ok": self.ok, "reason": self.reason, "status": self.status, "decided_by": self.decided_by,
                "checks": self.checks,
                "checkpoint": self.checkpoint, "inclusion": self.inclusion, "log_sha256": self.sha256,
                "rollback_covered": self.rollback_covered, "warnings": self.warnings}


def resolve_log(path: Path) -> Path:
    """PATH itself, or the signed log inside a promoted version folder (VERSION/convrepair/*.dsse.json)
    or inside a folder that holds exactly one log."""
    from convrepair.ledger.promote import EVIDENCE_DIR, PROMOTION_FILE

    path = Path(path)
    if not path.is_dir():
        if not path.exists():
            raise BadInput("no such log; name a signed log (*.dsse.json) or a promoted version folder (REPO/MODEL/VERSION)", path)
        return path
    folder = path / EVIDENCE_DIR if (path / EVIDENCE_DIR / PROMOTION_FILE).is_file() else path
    logs = sorted(p for p in folder.glob("*.dsse.json") if p.name != PROMOTION_FILE and not p.name.startswith("."))
    if len(logs) != 1:
        found = f"{len(logs)} logs ({', '.join(p.name for p in logs[:3])})" if logs else "no signed log"
        raise BadInput(f"is a folder with {found}; name the log itself, or a promoted version folder (REPO/MODEL/VERSION)", path)
    return logs[0]


def verify(log_path: Path, trusted: dict, require_approval: bool = False, chain: bool = False,
           pinned: Path | None = None, trust: Path | None = None) -> Verification:
    """Every check on the log at LOG_PATH (or in the promoted version folder LOG_PATH); TRUST is the
    trust file's path, which places the decisions when the log is under no registry (layout.py)."""
    log_path = resolve_log(log_path)
    result = Verification(str(log_path))
    envelope, raw = dsse.read_envelope(log_path)
    result.raw, result.sha256 = raw, hashlib.sha256(raw).hexdigest()
    canonical = raw == dsse.canonical(envelope)
    result.add("canonical bytes", canonical, "the file is byte for byte what was signed" if canonical
               else "the log file was altered (bytes differ from the signed envelope)")
    services = {k: v for k, v in trusted.items() if v.role == "service"}
    ok, detail, signer = dsse.verify_signature(envelope, services, trusted)
    result.add("log signature", ok, detail)
    if not ok:
        return result
    result.signer = signer
    statement = dsse.statement_of(envelope, log_path)
    if statement.get("predicateType") != LOG_PREDICATE:
        result.add("log type", False, f"predicateType {statement.get('predicateType')!r}")
        return result
    result.statement = statement
    _check_files(result, log_path, statement, result.sha256, trusted)
    _check_decisions(result, log_path, result.sha256, signer, trusted, require_approval, chain, pinned, trust)
    return result


def _check_files(result: Verification, log_path: Path, statement: dict, digest: str, trusted: dict) -> None:
    from convrepair.ledger.promote import PROMOTION_FILE, check_promotion

    located: dict[str, Path] = {}
    if (log_path.parent / PROMOTION_FILE).exists():  # a promoted version: files moved, the statement says where
        located = check_promotion(result, log_path, digest, trusted)
    base = log_path.resolve().parent
    for entry in statement["predicate"].get("files", []):
        required = entry["role"].startswith("output")
        path = located.get(entry["name"]) if located else base / entry["name"]
        if path is None or not path.exists():
            why = "not promoted" if located and path is None else "missing"
            result.add(f"file {entry['name']}", not required, why if required else "input not present here (not checked)")
            continue
        actual = sha256_file(path)
        result.add(f"file {entry['name']}", actual == entry["sha256"],
                   "digest matches" if actual == entry["sha256"] else f"changed: sha256 {actual[:16]}… ≠ logged {entry['sha256'][:16]}…")


def _check_decisions(result: Verification, log_path: Path, digest: str, signer: str, trusted: dict,
                     require_approval: bool, chain: bool, pinned: Path | None, trust: Path | None) -> None:
    tlog = TransparencyLog.for_log(log_path, trust)
    state = tlog.read(trusted) if tlog.exists() else None
    if state is not None:
        result.add("transparency log", state.ok, "; ".join(state.problems) if state.problems
                   else f"{len(state.entries)} decision(s) match the checkpoint signed by {state.signer[:16]}…"
                   if state.checkpoint else "empty")
        if state.checkpoint:
            result.checkpoint = dict(state.checkpoint.to_json(), signed_by=state.signer, path=str(tlog.checkpoint_path))
    reviewers = {k: v for k, v in trusted.items() if v.role == "reviewer"}
    approved = rejected = False
    about = decisions_about(state, digest) if state is not None else []
    for entry, decision in about:
        d_ok, d_detail, d_signer = dsse.verify_signature(decision.envelope, reviewers, trusted)
        if d_ok and decision.raw != dsse.canonical(decision.envelope):
            d_ok, d_detail = False, "decision entry was altered"
        if d_ok and d_signer == signer:
            d_ok, d_detail = False, "decided with the key that signed the log"
        inclusion = state.inclusion(entry.index) if state.ok and state.checkpoint else None
        if d_ok and not (inclusion and inclusion["ok"]):
            d_ok, d_detail = False, ("not included in the tree of the signed checkpoint" if state.ok else
                                     "cannot be proven included: the transparency log does not match its checkpoint")
        result.add(f"decision {entry.path.name}", d_ok, d_detail if not d_ok else
                   f"{decision.decision} by {d_signer[:16]}…, included at {entry.index} of {state.checkpoint.size}")
        if d_ok:
            result.inclusion, result.decided_by = inclusion, d_signer
        approved |= d_ok and decision.decision == "approved"
        rejected |= d_ok and decision.decision == "rejected"
    if state is not None:  # a decision about an earlier log of this name: the log was replaced after it
        name = log_name(log_path, tlog.directory.parent)
        for entry in state.entries:
            try:
                other = decision_of(entry)
            except Exception:  # noqa: BLE001 - an unreadable entry already fails the tree check
                continue
            if other.log_name == name and other.log_sha256 != digest:
                result.add(f"decision {entry.path.name}", False, "it is about a different log (digest mismatch): "
                           "the log was replaced after it was decided")
    result.status = "rejected" if rejected else "approved" if approved else "pending"
    if require_approval:
        result.add("approval", approved and not rejected, "approved" if approved and not rejected else
                   "rejected" if rejected else "no valid approval" + ("" if state else f" (no transparency log at {tlog.directory})"))
    if chain:
        chain_ok, chain_detail = verify_chain(state) if state is not None else (True, "no decisions")
        result.add("decision chain", chain_ok, chain_detail)
    if pinned is not None:
        _check_pinned(result, Path(pinned), state, trusted)
        result.rollback_covered = result.ok
        if Path(pinned).resolve().is_relative_to(tlog.directory.parent.resolve()):
            result.warnings.append(f"the pin {pinned} lies inside the registry ({tlog.directory.parent}), whose writers "
                                   "can roll it back together with the decisions; keep it elsewhere")
    elif require_approval:
        result.warnings.append(ROLLBACK_NOT_COVERED)


def _check_pinned(result: Verification, pinned: Path, state, trusted: dict) -> None:
    """Consistency from the pinned checkpoint to the current one; a first use pins the current one."""
    current = state.checkpoint if state is not None else None
    if not pinned.exists():
        result.add("pinned checkpoint", True, f"none pinned yet: {pinned} will hold the current one (trust on first use)")
    else:
        try:
            old, _ = notes.verify(pinned.read_text(), trusted)
        except (notes.NoteError, OSError, UnicodeDecodeError) as exc:
            result.add("pinned checkpoint", False, f"{pinned}: {exc}")
            return
        if current is None:
            result.add("pinned checkpoint", old.size == 0, f"the log is gone but the pinned checkpoint saw {old.size} decision(s)")
            return
        ok, detail = state.consistency_from(old)
        result.add("pinned checkpoint", ok, detail)
        if not ok or old.size >= current.size:
            return
    if result.ok and current is not None:  # advance the pin only over a log that verified
        with atomic_output(pinned) as tmp:
            tmp.write_text(state.note)
