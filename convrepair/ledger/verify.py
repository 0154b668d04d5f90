"""`convrepair verify`: what a deployment pipeline runs. Fails closed: every check must hold.

Checks: the log's bytes are the canonical envelope that was signed; its signature verifies with a
trusted service key; every file it names still has its digest (outputs must be present; inputs
are checked where present); decisions about it verify with trusted reviewer keys other than the
signer, and reference this exact log; with --require-approval, an approval exists and no
rejection; with --chain, the decision chain is intact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convrepair.fsutil import sha256_file
from convrepair.ledger import dsse
from convrepair.ledger.decisions import decisions_dir, read_decisions, verify_chain
from convrepair.ledger.log import LOG_PREDICATE


@dataclass
class Verification:
    log: str
    ok: bool = True
    checks: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append({"check": name, "ok": ok, "detail": detail})
        self.ok = self.ok and ok

    @property
    def reason(self) -> str:
        failed = [c for c in self.checks if not c["ok"]]
        return "; ".join(f"{c['check']}: {c['detail']}" for c in failed) or "all checks hold"

    def to_json(self) -> dict[str, Any]:
        return {"log": self.log, "ok": self.ok, "reason": self.reason, "checks": self.checks}


def verify(log_path: Path, trusted: dict, require_approval: bool = False, chain: bool = False) -> Verification:
    log_path = Path(log_path)
    result = Verification(str(log_path))
    envelope, raw = dsse.read_envelope(log_path)
    result.add("canonical bytes", raw == dsse.canonical(envelope), "the file is byte for byte what was signed"
               if raw == dsse.canonical(envelope) else "the log file was altered (bytes differ from the signed envelope)")
    ok, detail, signer = dsse.verify_signature(envelope, {k: v for k, v in trusted.items() if v.role == "service"})
    if not ok and signer in trusted:
        detail += f" (key {signer[:16]}… is trusted as {trusted[signer].role}, not service)"
    result.add("log signature", ok, detail)
    if not ok:
        return result
    statement = dsse.statement_of(envelope, log_path)
    if statement.get("predicateType") != LOG_PREDICATE:
        result.add("log type", False, f"predicateType {statement.get('predicateType')!r}")
        return result
    base = log_path.resolve().parent
    for entry in statement["predicate"]["files"]:
        path = base / entry["name"]
        if not path.exists():
            required = entry["role"].startswith("output")
            result.add(f"file {entry['name']}", not required, "missing" if required else "input not present here (not checked)")
            continue
        actual = sha256_file(path)
        result.add(f"file {entry['name']}", actual == entry["sha256"],
                   "digest matches" if actual == entry["sha256"] else f"changed: sha256 {actual[:16]}… ≠ logged {entry['sha256'][:16]}…")
    digest = sha256_file(log_path)
    decisions = read_decisions(decisions_dir(log_path))
    mine = [d for d in decisions if d.log_name == log_path.name]
    reviewers = {k: v for k, v in trusted.items() if v.role == "reviewer"}
    approved = rejected = False
    for decision in mine:
        d_envelope, d_raw = dsse.read_envelope(decision.path)
        d_ok, d_detail, d_signer = dsse.verify_signature(d_envelope, reviewers)
        if d_ok and d_raw != dsse.canonical(d_envelope):
            d_ok, d_detail = False, "decision file was altered"
        if d_ok and d_signer == signer:
            d_ok, d_detail = False, "decided with the key that signed the log"
        if d_ok and decision.log_sha256 != digest:
            d_ok, d_detail = False, "it is about a different log (digest mismatch)"
        result.add(f"decision {decision.path.name}", d_ok, d_detail if not d_ok else f"{decision.decision} by {d_signer[:16]}…")
        approved |= d_ok and decision.decision == "approved"
        rejected |= d_ok and decision.decision == "rejected"
    if require_approval:
        result.add("approval", approved and not rejected,
                   "approved" if approved and not rejected else ("rejected" if rejected else "no valid approval"))
    if chain:
        chain_ok, chain_detail = verify_chain(decisions_dir(log_path))
        result.add("decision chain", chain_ok, chain_detail)
    return result
