"""DSSE envelopes: signatures over PAE("DSSEv1", type, body), several per envelope allowed.

An envelope file is written in one canonical form, so `verify` can insist that the bytes on disk
are exactly what was signed and written (a changed byte anywhere fails, not only in the payload).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from convrepair.errors import BadInput

PAYLOAD_TYPE = "application/vnd.in-toto+json"


def pae(payload_type: str, body: bytes) -> bytes:
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def canonical(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def sign(statement: dict[str, Any], private_key, keyid: str) -> dict[str, Any]:
    body = canonical(statement)
    signature = private_key.sign(pae(PAYLOAD_TYPE, body))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(body).decode(),
        "signatures": [{"keyid": keyid, "sig": base64.b64encode(signature).decode()}],
    }


def read_envelope(path: Path) -> tuple[dict[str, Any], bytes]:
    """(envelope, the exact file bytes); a malformed file is a BadInput."""
    try:
        raw = Path(path).read_bytes()
        envelope = json.loads(raw)
        assert isinstance(envelope, dict) and {"payloadType", "payload", "signatures"} <= set(envelope)
    except (OSError, ValueError, AssertionError) as exc:
        raise BadInput(f"is not a DSSE envelope (corrupted JSON?): {exc or 'missing fields'}", path) from None
    return envelope, raw


def statement_of(envelope: dict[str, Any], path: Path | None = None) -> dict[str, Any]:
    try:
        return json.loads(base64.b64decode(envelope["payload"], validate=True))
    except (ValueError, TypeError) as exc:
        raise BadInput(f"envelope payload is not base64 JSON: {exc}", path) from None


def verify_signature(envelope: dict[str, Any], keys: dict) -> tuple[bool, str, str | None]:
    """(ok, reason, keyid of the signature that verified) against the given keyid → PublicKey map."""
    from cryptography.exceptions import InvalidSignature

    try:
        body = base64.b64decode(envelope["payload"], validate=True)
    except (ValueError, TypeError):
        return False, "payload is not valid base64", None
    message = pae(envelope["payloadType"], body)
    if not envelope["signatures"]:
        return False, "envelope carries no signature", None
    for signature in envelope["signatures"]:
        key = keys.get(signature.get("keyid"))
        if key is None:
            return False, f"signed by unknown key {signature.get('keyid')}", signature.get("keyid")
        try:
            key.verifier().verify(base64.b64decode(signature["sig"]), message)
        except (InvalidSignature, ValueError, TypeError):
            return False, f"signature by {signature['keyid'][:16]}… does not verify", signature["keyid"]
        return True, "signature verifies", signature["keyid"]
    return False, "no signature verifies", None
