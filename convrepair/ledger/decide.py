"""`approve` and `reject`: a reviewer's decision, appended to the registry's transparency log.

A log is decided only after it verifies against the trust file (a forged or unverifiable log is
refused, exit 1); by a key the trust file lists as reviewer, never by the key that signed the
log; once. The new checkpoint is signed by the reviewer's key: the reviewer is the one appending,
holds no service key, and verify accepts checkpoints only from keys the trust file lists as
reviewer or log, never the service key (which lives where untrusted models run).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from convrepair.errors import BadInput
from convrepair.ledger import dsse
from convrepair.ledger.decisions import DECISION_PREDICATE, GENESIS, Decision, Unverified, decision_of, decisions_about
from convrepair.ledger.keys import keyid_of, load_private_key
from convrepair.ledger.layout import log_name
from convrepair.ledger.log import now
from convrepair.ledger.transparency import TransparencyLog
from convrepair.ledger.verify import Verification, verify


def decide(log_path: Path, key_path: Path, decision: str, text: str, trusted: dict,
           plan_promotion: Callable[[Verification], Any] | None = None, trust: Path | None = None) -> tuple[Decision, dict]:
    """Verify the log, then append a signed approval or rejection to the transparency log.

    `plan_promotion` makes a promote.Plan from the verification once the log has verified (so a
    forged log is refused before its contents are used). The plan copies and checks every file
    against the logged digests before anything is signed, then is sealed after the approval is in
    the log. The log is read once: the digest the decision names is of the bytes that verified.
    TRUST (the trust file's path) places the decisions when the log is under no registry.
    Returns the decision and the verification of the log.
    """
    check = verify(log_path, trusted, trust=trust)
    if not check.ok:
        raise Unverified(f"refusing to {'approve' if decision == 'approved' else 'reject'}: {check.reason}", log_path)
    log_path, signer, digest = Path(check.log), check.signer, check.sha256
    key = load_private_key(key_path)
    reviewer = keyid_of(key.public_key())
    if reviewer == signer:
        raise BadInput("a log cannot be approved or rejected with the key that signed it; use a reviewer key", key_path)
    listed = trusted.get(reviewer)
    if listed is None or listed.role != "reviewer":
        why = "does not list it" if listed is None else f"lists it as {listed.role}"
        raise BadInput(f"key {reviewer[:16]}… is not a reviewer (the trust file {why}); its decision would not verify", key_path)
    promotion = plan_promotion(check) if plan_promotion is not None else None
    tlog = TransparencyLog.for_log(log_path, trust)
    with tlog.locked():
        state = tlog.read(trusted)
        if not state.ok:
            raise Unverified(f"transparency log {tlog.directory}: {state.problems[0]}; refusing to append to it")
        existing = decisions_about(state, digest)
        if existing and not (existing[0][1].decision == "approved" == decision and promotion is not None):
            raise BadInput(f"already {existing[0][1].decision} ({existing[0][0].path.name}); a log gets one decision", log_path)
        if promotion is not None:
            promotion.stage()  # every copy checked against the logged digests; nothing is signed yet
        try:
            if existing:
                entry = existing[0][0]  # approved before: promote it now (a promotion cut short, or another place)
            else:
                previous = hashlib.sha256(state.entries[-1].data).hexdigest() if state.entries else GENESIS
                predicate: dict[str, Any] = {"decision": decision, "sequence": len(state.entries), "previous": previous,
                                             "reviewer": reviewer, "time": now()}
                predicate["comment" if decision == "approved" else "reason"] = text
                name = log_name(log_path, tlog.directory.parent)
                statement = dsse.statement([{"name": name, "digest": {"sha256": digest}}], DECISION_PREDICATE, predicate)
                entry, _ = tlog.append(state, dsse.canonical(dsse.sign(statement, key, reviewer)), decision, key)
            if promotion is not None:  # under the lock: the snapshot of the log is one consistent state
                promotion.seal(key, tlog, entry)
        finally:
            if promotion is not None:
                promotion.discard()
    return decision_of(entry), check.to_json()
