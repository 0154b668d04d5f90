"""Signed checkpoints of the decisions' Merkle tree, in the C2SP tlog-checkpoint layout inside a
signed note as Go's golang.org/x/mod/sumdb/note writes it:

    <origin>\\n<tree size>\\n<base64 root hash>\\n
    \\n
    — <key name> <base64(4-byte key hash || Ed25519 signature over the text above the blank line)>\\n

The key name is the signer's keyid (sha256 of its raw public key, as in the trust file); the key
hash is SHA-256(name || "\\n" || 0x01 || public key)[:4], Go's hash for Ed25519 note keys.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from convrepair.ledger.keys import keyid_of

_DASH = "\u2014 "
_ED25519 = b"\x01"


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    def to_json(self) -> dict:
        return {"origin": self.origin, "size": self.size, "root": self.root.hex()}


class NoteError(ValueError):
    """A checkpoint that is malformed or whose signature does not verify."""


def _raw(public_key) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_hash(name: str, public_key) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ED25519 + _raw(public_key)).digest()[:4]


def sign(checkpoint: Checkpoint, private_key) -> str:
    """The checkpoint as a signed note, signed by `private_key` (Ed25519)."""
    name = keyid_of(private_key.public_key())
    body = checkpoint.body()
    signature = private_key.sign(body.encode())
    blob = base64.b64encode(key_hash(name, private_key.public_key()) + signature).decode()
    return f"{body}\n{_DASH}{name} {blob}\n"


def parse(text: str) -> tuple[Checkpoint, list[tuple[str, bytes, bytes]]]:
    """(checkpoint, [(key name, key hash, signature)]); NoteError when not a checkpoint note."""
    checkpoint, _, parsed = _split(text)
    return checkpoint, parsed


def _split(text: str) -> tuple[Checkpoint, bytes, list[tuple[str, bytes, bytes]]]:
    """(checkpoint, the signed text exactly as received, signatures). The note carries nothing
    unsigned: the body is exactly origin, size and root (no extension lines: this log writes none),
    and every line after the blank line is a signature."""
    body, sep, signatures = text.partition("\n\n")
    if not sep or not signatures.endswith("\n"):
        raise NoteError("not a signed note (no blank line before the signatures)")
    lines = body.split("\n")
    if len(lines) < 3 or not lines[0] or not lines[1].isdigit() or (len(lines[1]) > 1 and lines[1][0] == "0"):
        raise NoteError("not a checkpoint (origin, tree size, root hash)")
    if len(lines) > 3:
        raise NoteError(f"{len(lines) - 3} line(s) after the root hash; this log's checkpoints carry none")
    try:
        root = base64.b64decode(lines[2], validate=True)
    except ValueError:
        raise NoteError("root hash is not base64") from None
    if len(root) != 32:
        raise NoteError("root hash is not 32 bytes")
    parsed = []
    for line in signatures[:-1].split("\n"):
        if not line.startswith(_DASH) or line.count(" ") != 2:
            raise NoteError(f"malformed signature line {line[:40]!r}")
        name, blob = line[len(_DASH):].split(" ")
        try:
            raw = base64.b64decode(blob, validate=True)
        except ValueError:
            raise NoteError("signature is not base64") from None
        if len(raw) < 5:
            raise NoteError("signature too short")
        parsed.append((name, raw[:4], raw[4:]))
    return Checkpoint(lines[0], int(lines[1]), root), (body + "\n").encode(), parsed


def verify(text: str, trusted: dict) -> tuple[Checkpoint, str]:
    """(checkpoint, keyid of the trusted key whose signature verifies); NoteError otherwise.

    Only a key the trust file lists as reviewer or log counts (the service key lives on the host
    that runs untrusted models: it must not be able to cut the log short and sign that), and the
    signature is checked over the text exactly as received, not over a re-serialisation of it.
    """
    from cryptography.exceptions import InvalidSignature

    from convrepair.ledger.keys import CHECKPOINT_ROLES

    checkpoint, signed, signatures = _split(text)
    unknown, wrong_role = [], []
    for name, hash4, signature in signatures:
        key = trusted.get(name)
        if key is None:
            unknown.append(name)
            continue
        if key.role not in CHECKPOINT_ROLES:
            wrong_role.append(key)
            continue
        verifier = key.verifier()
        if key_hash(name, verifier) != hash4:
            continue
        try:
            verifier.verify(signature, signed)
        except InvalidSignature:
            raise NoteError(f"checkpoint signature by {name[:16]}… does not verify (the checkpoint was altered)") from None
        return checkpoint, name
    if wrong_role:
        key = wrong_role[0]
        raise NoteError(f"checkpoint signed by key {key.keyid[:16]}… ({key.name or 'unnamed'}), which the trust file lists "
                        f"as {key.role}; only {' or '.join(CHECKPOINT_ROLES)} keys may sign checkpoints")
    if unknown:
        raise NoteError(f"checkpoint signed by key {unknown[0][:16]}… which the trust file does not list")
    raise NoteError("checkpoint carries no signature by a trusted key")
