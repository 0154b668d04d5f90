"""OpenSSF model-signing of a promoted version: a key-based bundle over every file of the version,
made and checked with the `model_signing` library exactly as its CLI does
(`model_signing verify key DIR --signature DIR/convrepair/model.sig --public_key NAME.p256.pub`).
Its failures are reported with every digest as hex (the library quotes raw bytes).
"""

from __future__ import annotations

import re
from pathlib import Path

EVIDENCE_DIR = "convrepair"
SIGNATURE_FILE = "model.sig"


def sign_model_dir(model_dir: Path, p256_key: Path) -> Path:
    """An OpenSSF model-signing bundle (key-based) over every file of MODEL_DIR, at convrepair/model.sig."""
    import model_signing

    signature = Path(model_dir) / EVIDENCE_DIR / SIGNATURE_FILE
    # relative to the model: the bundle records it, and a verifier then skips the bundle itself
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=[f"{EVIDENCE_DIR}/{SIGNATURE_FILE}"], ignore_git_paths=True)
    model_signing.signing.Config().use_elliptic_key_signer(private_key=p256_key).set_hashing_config(hashing).sign(
        model_dir, signature)
    return signature


def verify_model_dir(model_dir: Path, public_pem: str) -> tuple[bool, str]:
    """Check the model-signing bundle as `model_signing verify key` does, with a trusted P-256 key."""
    import tempfile

    import model_signing

    signature = Path(model_dir) / EVIDENCE_DIR / SIGNATURE_FILE
    if not signature.is_file():
        return False, f"no {EVIDENCE_DIR}/{SIGNATURE_FILE}"
    with tempfile.NamedTemporaryFile("w", suffix=".pub") as handle:
        handle.write(public_pem)
        handle.flush()
        try:
            model_signing.verifying.Config().use_elliptic_key_verifier(public_key=handle.name).verify(model_dir, signature)
        except Exception as exc:  # noqa: BLE001 - model_signing raises ValueError and its own errors alike
            return False, _hex_digests(" ".join(str(exc).split()))[:400] or type(exc).__name__
    return True, "OpenSSF model-signing bundle verifies"


_DIGEST = re.compile(r"Digest\(algorithm=['\"]?([\w-]+)['\"]?, digest_value=(b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\")\)")


def _hex_digests(message: str) -> str:
    """model_signing's mismatch message with every digest as hex (it quotes the raw bytes)."""
    import ast

    head, sep, listed = message.partition(": [")
    if sep:
        try:
            items = ast.literal_eval("[" + listed)
            message = f"{head}: " + "; ".join(str(item) for item in items)
        except (ValueError, SyntaxError):
            pass

    def as_hex(match: re.Match) -> str:
        try:
            return f"{match.group(1)}:{ast.literal_eval(match.group(2)).hex()}"
        except (ValueError, SyntaxError):
            return f"{match.group(1)}:(unreadable digest)"

    return _DIGEST.sub(as_hex, message)
