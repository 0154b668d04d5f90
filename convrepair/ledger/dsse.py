"""DSSE envelopes and in-toto statements, made and checked with maintained libraries:
securesystemslib's `dsse.Envelope` (PAE, signing, base64 per the DSSE spec) and the in-toto
attestation framework's `Statement`/`ResourceDescriptor` (its validation of subjects and types).

An envelope file is written in one canonical form, so `verify` can insist that the bytes on disk
are exactly what was signed and written (a changed byte anywhere fails, not only in the payload).
Logs written before these libraries verify unchanged: the bytes on disk are the same format.
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


def statement(subjects: list[dict[str, Any]], predicate_type: str, predicate: dict[str, Any]) -> dict[str, Any]:
    """An in-toto Statement v1, validated by in_toto_attestation. The predicate is carried as our own
    JSON: the library keeps it in a protobuf Struct, which would turn every integer into a float."""
    from google.protobuf import json_format
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement

    descriptors = [ResourceDescriptor(name=s["name"], digest=s["digest"]).pb for s in subjects]
    built = Statement(descriptors, predicate_type, {"_": True} if predicate else {})
    try:
        built.validate()
    except ValueError as exc:
        raise BadInput(f"cannot make an in-toto statement: {exc}") from None
    out = json_format.MessageToDict(built.pb)
    out["predicate"] = predicate
    return out


def _sslib_key(keyid: str, public_key):
    from securesystemslib.signer import SSlibKey

    return SSlibKey.from_crypto(public_key, keyid=keyid)


def sign(statement: dict[str, Any], private_key, keyid: str) -> dict[str, Any]:
    """A DSSE envelope of the canonical statement, signed by `private_key` (Ed25519) as `keyid`."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import CryptoSigner

    envelope = Envelope(payload=canonical(statement), payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(CryptoSigner(private_key, _sslib_key(keyid, private_key.public_key())))
    out = envelope.to_dict()
    return {"payloadType": out["payloadType"], "payload": out["payload"], "signatures": out["signatures"]}


def read_envelope(path: Path) -> tuple[dict[str, Any], bytes]:
    """(envelope, the exact file bytes); a malformed file is a BadInput."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise BadInput(f"is not a DSSE envelope (cannot read it): {exc.strerror or exc}", path) from None
    return parse_envelope(raw, path), raw


def parse_envelope(raw: bytes, path: Path | None = None) -> dict[str, Any]:
    """The envelope in RAW (bytes already read: whoever verifies them hashes the same bytes)."""
    try:
        envelope = json.loads(raw)
        assert isinstance(envelope, dict) and {"payloadType", "payload", "signatures"} <= set(envelope)
        assert isinstance(envelope["signatures"], list) and all(isinstance(s, dict) for s in envelope["signatures"])
    except (ValueError, AssertionError) as exc:
        raise BadInput(f"is not a DSSE envelope (corrupted JSON?): {exc or 'missing fields'}", path) from None
    return envelope


def statement_of(envelope: dict[str, Any], path: Path | None = None) -> dict[str, Any]:
    try:
        statement = json.loads(base64.b64decode(envelope["payload"], validate=True))
    except (ValueError, TypeError) as exc:
        raise BadInput(f"envelope payload is not base64 JSON: {exc}", path) from None
    if not isinstance(statement, dict) or not isinstance(statement.get("predicate", {}), dict):
        raise BadInput("envelope payload is not an in-toto statement (a JSON object with a predicate object)", path)
    return statement


def verify_signature(envelope: dict[str, Any], keys: dict, trust_names: dict | None = None) -> tuple[bool, str, str | None]:
    """(ok, reason, keyid of the signature that verified) against the given keyid → PublicKey map.

    `trust_names` (every key of the trust file) lets a reason say that a key is listed with
    another role rather than not listed at all.
    """
    import copy

    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import FormatError, UnverifiedSignatureError

    try:
        parsed = Envelope.from_dict(copy.deepcopy(envelope))  # from_dict rewrites the signatures it is given
    except (ValueError, TypeError, KeyError, AttributeError, FormatError):
        return False, "envelope is malformed (payload or signature is not base64)", None
    if not parsed.signatures:
        return False, "envelope carries no signature", None
    trust_names = trust_names or keys
    first = None
    for keyid, signature in parsed.signatures.items():
        key = keys.get(keyid)
        first = first or keyid
        if key is None:
            continue
        try:
            _sslib_key(keyid, key.verifier()).verify_signature(signature, parsed.pae())
        except (UnverifiedSignatureError, ValueError, TypeError):
            return False, f"signature by key {keyid[:16]}… does not verify (the signed content was altered)", keyid
        return True, "signature verifies", keyid
    listed = trust_names.get(first)
    if listed is not None:
        wanted = sorted({k.role for k in keys.values()}) or ["(none)"]
        return False, f"signed by key {first[:16]}… ({listed.name or 'unnamed'}), which the trust file lists as {listed.role}, not {' or '.join(wanted)}", first
    return False, f"signed by key {first[:16]}… which the trust file does not list", first
