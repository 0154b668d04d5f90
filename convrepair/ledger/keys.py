"""Keys: create (private keys 0600, never overwritten), load (refusing loose permissions), and the
trust file that names which public keys play which role, and where that file is found.

Each key has two halves: an Ed25519 pair (NAME.key/.pub) that signs repair logs, decisions and
checkpoints, and an ECDSA P-256 pair (NAME.p256.key/.pub) for OpenSSF model-signing, which takes
only NIST curves. Both sit in one trust entry, so one identity signs both ways.
"""

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

ROLES = ("service", "reviewer", "log")
CHECKPOINT_ROLES = ("reviewer", "log")  # may sign transparency checkpoints; never the service key
TRUST_FILE = "trust.json"  # the same name as layout.TRUST_FILE


@dataclass(frozen=True)
class PublicKey:
    keyid: str
    pem: str
    role: str | None = None
    name: str | None = None
    p256_pem: str | None = None  # the same identity's model-signing key, when it has one

    def verifier(self):
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        return load_pem_public_key(self.pem.encode())


def keyid_of(public_key) -> str:
    """sha256 of the raw 32-byte Ed25519 public key, hex."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class KeyPair:
    keyid: str
    private: Path
    public: Path
    p256_private: Path
    p256_public: Path
    created: tuple[str, ...]  # which halves this call wrote: "ed25519", "p256"


def p256_path(key_path: Path) -> Path:
    """NAME.p256.key beside NAME.key (and .pub beside .pub)."""
    key_path = Path(key_path)
    return key_path.with_name(key_path.stem + ".p256" + key_path.suffix)


def _write_private(path: Path, pem: bytes) -> None:
    # O_EXCL: a file that appears between the check and here is never overwritten either.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def init_keys(name: str, directory: Path) -> KeyPair:
    """Write NAME.key (0600) + NAME.pub and NAME.p256.key (0600) + NAME.p256.pub in DIRECTORY.

    Never overwrites: an existing Ed25519 pair without its P-256 half gets only the P-256 half;
    a complete set is refused.
    """
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    ec_private, ec_public = p256_path(private_path), p256_path(public_path)
    created = []
    if private_path.exists() or public_path.exists():
        if not (private_path.exists() and public_path.exists()) or ec_private.exists() or ec_public.exists():
            raise BadInput("already exists; refusing to overwrite a key", private_path if private_path.exists() else public_path)
        keyid = load_public_key(public_path).keyid
    else:
        key = Ed25519PrivateKey.generate()
        _write_private(private_path, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        public_path.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
        keyid = keyid_of(key.public_key())
        created.append("ed25519")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    _write_private(ec_private, ec_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    ec_public.write_bytes(ec_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    created.append("p256")
    return KeyPair(keyid, private_path, public_path, ec_private, ec_public, tuple(created))


def check_private_permissions(path: Path) -> bytes:
    """The bytes of the private key file at PATH; refused when unreadable or readable by group/others."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"no such key file; create it with `convrepair keys init --name {path.stem} --dir {path.parent}` "
                       "(add `--trust trust.json --role service|reviewer` to list it)", path) from None
    except PermissionError:
        raise BadInput("key file is not readable (check its permissions)", path) from None
    # Others may not touch it, and its group may at most read it (Kubernetes mounts secrets
    # group-readable through fsGroup); anything looser is refused.
    if mode & (stat.S_IRWXO | stat.S_IWGRP | stat.S_IXGRP):
        raise BadInput(f"private key is accessible to others (mode {stat.S_IMODE(mode):o}); chmod 600 it", path)
    return data


def load_private_key(path: Path):
    """The signing key at PATH; refused when unreadable or readable by group/others."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = check_private_permissions(path)
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise BadInput("is not a PEM private key", path) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadInput("is not an Ed25519 private key", path)
    return key


def load_public_key(path: Path) -> PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        pem = Path(path).read_text()
        key = load_pem_public_key(pem.encode())
    except (OSError, ValueError) as exc:
        raise BadInput(f"is not a readable PEM public key: {exc}", path) from None
    if not isinstance(key, Ed25519PublicKey):
        raise BadInput("is not an Ed25519 public key", path)
    p256 = p256_path(Path(path))
    return PublicKey(keyid_of(key), pem, p256_pem=p256.read_text() if p256.is_file() else None)


def read_trust(path: Path) -> dict[str, PublicKey]:
    """keyid → PublicKey with its role, from a trust file:
    {"keys": [{"keyid", "role", "name", "public_key", "model_signing_public_key"?}]}."""
    try:
        data = json.loads(Path(path).read_text())
        entries = data["keys"]
        assert isinstance(entries, list)
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
        raise BadInput(f"is not a trust file ({{'keys': [...]}}): {exc or 'keys is not a list'}", path) from None
    keys = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("keyid"), str) or not isinstance(entry.get("public_key"), str):
            raise BadInput("every key needs a keyid and a public_key", path)
        if entry.get("role") not in ROLES:
            raise BadInput(f"key {entry.get('keyid')} has role {entry.get('role')!r}; roles are {ROLES}", path)
        key = PublicKey(entry["keyid"], entry["public_key"], entry["role"], entry.get("name"), entry.get("model_signing_public_key"))
        try:
            matches = keyid_of(key.verifier()) == key.keyid
        except (ValueError, TypeError, AttributeError):
            raise BadInput(f"key {key.keyid[:16]}…: public_key is not an Ed25519 PEM public key", path) from None
        if not matches:
            raise BadInput(f"keyid {key.keyid} does not match its public key", path)
        keys[key.keyid] = key
    return keys


def find_trust(start: Path) -> Path:
    """The trust file for START (a log or a directory): the one rule of `layout.find_trust`."""
    from convrepair.ledger.layout import find_trust as find

    return find(start)


def add_to_trust(path: Path, public: PublicKey, role: str, name: str) -> None:
    if role not in ROLES:
        raise BadInput(f"role must be one of {ROLES}")
    data = json.loads(Path(path).read_text()) if Path(path).exists() else {"keys": []}
    data["keys"] = [k for k in data["keys"] if k["keyid"] != public.keyid]
    entry = {"keyid": public.keyid, "role": role, "name": name, "public_key": public.pem}
    if public.p256_pem:
        entry["model_signing_public_key"] = public.p256_pem
    data["keys"].append(entry)
    write_json_atomic(path, data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
