"""Ed25519 keys: create (private key 0600, never overwritten), load (refusing loose permissions),
and the trust file that names which public keys play which role."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from convrepair.errors import BadInput
from convrepair.fsutil import write_json_atomic

ROLES = ("service", "reviewer")


@dataclass(frozen=True)
class PublicKey:
    keyid: str
    pem: str
    role: str | None = None
    name: str | None = None

    def verifier(self):
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        return load_pem_public_key(self.pem.encode())


def keyid_of(public_key) -> str:
    """sha256 of the raw 32-byte Ed25519 public key, hex."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def init_keys(name: str, directory: Path) -> tuple[Path, Path, str]:
    """Write NAME.key (0600) and NAME.pub in DIRECTORY; refuse to overwrite either."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise BadInput("already exists; refusing to overwrite a key", path)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    # O_EXCL: a file that appears between the check and here is never overwritten either.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path, keyid_of(key.public_key())


def load_private_key(path: Path):
    """The signing key at PATH; refused when unreadable or readable by group/others."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInput("no such key file", path) from None
    except PermissionError:
        raise BadInput("key file is not readable (check its permissions)", path) from None
    # Others may not touch it, and its group may at most read it (Kubernetes mounts secrets
    # group-readable through fsGroup); anything looser is refused.
    if mode & (stat.S_IRWXO | stat.S_IWGRP | stat.S_IXGRP):
        raise BadInput(f"private key is accessible to others (mode {stat.S_IMODE(mode):o}); chmod 600 it", path)
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise BadInput("is not a PEM private key", path) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadInput("is not an Ed25519 private key", path)
    return key


def load_public_key(path: Path) -> PublicKey:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        pem = Path(path).read_text()
        key = load_pem_public_key(pem.encode())
    except (OSError, ValueError) as exc:
        raise BadInput(f"is not a readable PEM public key: {exc}", path) from None
    return PublicKey(keyid_of(key), pem)


def read_trust(path: Path) -> dict[str, PublicKey]:
    """keyid → PublicKey with its role, from a trust file: {"keys": [{"keyid", "role", "public_key"}]}."""
    try:
        data = json.loads(Path(path).read_text())
        entries = data["keys"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"is not a trust file ({{'keys': [...]}}): {exc}", path) from None
    keys = {}
    for entry in entries:
        if entry.get("role") not in ROLES:
            raise BadInput(f"key {entry.get('keyid')} has role {entry.get('role')!r}; roles are {ROLES}", path)
        key = PublicKey(entry["keyid"], entry["public_key"], entry["role"], entry.get("name"))
        if keyid_of(key.verifier()) != key.keyid:
            raise BadInput(f"keyid {key.keyid} does not match its public key", path)
        keys[key.keyid] = key
    return keys


def add_to_trust(path: Path, public: PublicKey, role: str, name: str) -> None:
    if role not in ROLES:
        raise BadInput(f"role must be one of {ROLES}")
    data = json.loads(Path(path).read_text()) if Path(path).exists() else {"keys": []}
    data["keys"] = [k for k in data["keys"] if k["keyid"] != public.keyid]
    data["keys"].append({"keyid": public.keyid, "role": role, "name": name, "public_key": public.pem})
    write_json_atomic(path, data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
