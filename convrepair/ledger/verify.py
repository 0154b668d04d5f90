"""`convrepair verify`: what a deployment pipeline runs. Fails closed: every check must hold.

Checks: the log's bytes are the canonical envelope that was signed; its signature verifies with a
trusted service key; every file it names still has its digest (outputs must be present; inputs
are checked where present), found through the signed promotion statement in a promoted version;
the registry's transparency log matches its signed checkpoint (nothing deleted, reordered,
replaced or added behind its back); every decision about this log is included in that tree,
verifies with a trusted reviewer key other than the signer and names this exact log; with
--require-approval, an approval exists and no rejection; with --chain, the entries' hash chain
holds; with a pinned checkpoint, the log is a consistent extension of it (RFC 9162 proof).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convrepair.fsutil import atomic_output, sha256_file
from convrepair.ledger import checkpoint as notes
from convrepair.ledger import dsse
from convrepair.ledger.decisions import decisions_about, decision_of, verify_chain
from convrepair.ledger.log import LOG_PREDICATE
from convrepair.ledger.transparency import TransparencyLog, ledger_root


@dataclass
class Verification:
    log: str
    ok: bool = True
    checks: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: dict[str, Any] | None = None
    inclusion: dict[str, Any] | None = None
    status: str = "pending"  # pending | approved | rejected, from the decisions that verify
    decided_by: str | None = None

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
                "checkpoint": self.checkpoint, "inclusion": self.inclusion}


def verify(log_path: Path, trusted: dict, require_approval: bool = False, chain: bool = False,
           pinned: Path | None = None) -> Verification:
    log_path = Path(log_path)
    result = Verification(str(log_path))
    envelope, raw = dsse.read_envelope(log_path)
    canonical = raw == dsse.canonical(envelope)
    result.add("canonical bytes", canonical, "the file is byte for byte what was signed" if canonical
               else "the log file was altered (bytes differ from the signed envelope)")
    services = {k: v for k, v in trusted.items() if v.role == "service"}
    ok, detail, signer = dsse.verify_signature(envelope, services, trusted)
    result.add("log signature", ok, detail)
    if not ok:
        return result
    statement = dsse.statement_of(envelope, log_path)
    if statement.get("predicateType") != LOG_PREDICATE:
        result.add("log type", False, f"predicateType {statement.get('predicateType')!r}")
        return result
    digest = sha256_file(log_path)
    _check_files(result, log_path, statement, digest, trusted)
    _check_decisions(result, log_path, digest, signer, trusted, require_approval, chain, pinned)
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
                     require_approval: bool, chain: bool, pinned: Path | None) -> None:
    tlog = TransparencyLog.for_log(log_path)
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
        name = log_path.resolve().relative_to(ledger_root(log_path)).as_posix()
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
