"""`approve --promote REPO`: the approved output as a Triton-servable version that still verifies.

    REPO/<model>/<version>/model.<ext>                      the repaired model (model.savedmodel/ for a directory)
    REPO/<model>/<version>/model.<ext>.convrepair.json      its sidecar; calibration data kept beside it
    REPO/<model>/<version>/convrepair/<log>.dsse.json       the signed repair log, byte for byte
    REPO/<model>/<version>/convrepair/promotion.dsse.json   signed statement: logged name → promoted path, digests
    REPO/<model>/<version>/convrepair/transparency/         the decisions' log and checkpoint as of the approval
    REPO/<model>/<version>/convrepair/model.sig             OpenSSF model-signing bundle over the whole version

The version is written beside its final place and renamed into it (never half there, never over
an existing version). `verify` on the copied log finds the files through the promotion statement.
The model-signing bundle is made with the reviewer's P-256 key (NAME.p256.key beside NAME.key):
`model_signing verify key REPO/<model>/<version> --signature …/convrepair/model.sig --public_key NAME.p256.pub`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from convrepair.errors import BadInput
from convrepair.fsutil import atomic_output, sha256_file
from convrepair.ledger import dsse
from convrepair.ledger.keys import check_private_permissions, p256_path
from convrepair.ledger.log import now

PROMOTION_FILE = "promotion.dsse.json"
PROMOTION_PREDICATE = "https://convrepair.dev/promotion/v1"
EVIDENCE_DIR = "convrepair"
SIGNATURE_FILE = "model.sig"
_VERSION = re.compile(r"^[1-9][0-9]*$")
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Copy:
    role: str
    logged: str | None  # the name in the repair log (None: travels along, e.g. calibration data)
    source: Path
    promoted: str  # relative to the version directory


@dataclass
class Plan:
    log_path: Path
    destination: Path
    model: str
    version: str
    p256_key: Path
    copies: list[Copy] = field(default_factory=list)

    def carry_out(self, key, tlog, entry) -> Path:
        """Write the version (key: the reviewer's Ed25519 key; entry: the approval in TLOG)."""
        reviewer = _keyid(key)
        with atomic_output(self.destination) as tmp:
            tmp.mkdir(parents=True)
            for item in self.copies:
                (tmp / item.promoted).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(item.source, tmp / item.promoted)
            evidence = tmp / EVIDENCE_DIR
            evidence.mkdir()
            shutil.copy2(self.log_path, evidence / self.log_path.name)
            tlog.snapshot_to(evidence)
            files = [{"role": c.role, "logged": c.logged, "promoted": c.promoted, "sha256": sha256_file(tmp / c.promoted)}
                     for c in self.copies]
            predicate = {"model": self.model, "version": self.version, "time": now(),
                         "log": {"name": f"{EVIDENCE_DIR}/{self.log_path.name}", "sha256": sha256_file(self.log_path)},
                         "decision": {"entry": entry.path.name, "index": entry.index,
                                      "sha256": hashlib.sha256(entry.data).hexdigest()},
                         "files": files}
            statement = dsse.statement([{"name": f["promoted"], "digest": {"sha256": f["sha256"]}} for f in files],
                                       PROMOTION_PREDICATE, predicate)
            (evidence / PROMOTION_FILE).write_bytes(dsse.canonical(dsse.sign(statement, key, reviewer)))
            sign_model_dir(tmp, self.p256_key)
        return self.destination


def _keyid(key) -> str:
    from convrepair.ledger.keys import keyid_of

    return keyid_of(key.public_key())


def plan(log_path: Path, repository: Path, key_path: Path, model: str | None = None, version: str | None = None) -> Plan:
    """Everything promotion will copy, checked before the approval is written."""
    log_path = Path(log_path)
    envelope, _ = dsse.read_envelope(log_path)
    files = dsse.statement_of(envelope, log_path)["predicate"].get("files", [])
    outputs = [f for f in files if f["role"] == "output"]
    if not outputs:
        raise BadInput("the log names no output to promote (nothing was repaired)", log_path)
    default_model, default_version = _registry_place(log_path, outputs[0]["name"])
    model, version = model or default_model, version or default_version
    if not _MODEL.match(model):
        raise BadInput(f"model name {model!r} is not a Triton model name (letters, digits, _ . -)")
    if not _VERSION.match(version):
        raise BadInput(f"version {version!r} is not a Triton version (a positive integer)")
    destination = Path(repository) / model / version
    if destination.exists():
        raise BadInput("already exists; refusing to overwrite a promoted version", destination)
    p256 = p256_path(Path(key_path))
    if not p256.is_file():
        raise BadInput(f"promotion signs the model with OpenSSF model-signing, which needs the P-256 key {p256.name} "
                       f"beside the reviewer key (`convrepair keys init --name {Path(key_path).stem} --dir "
                       f"{Path(key_path).parent}` adds it)", key_path)
    check_private_permissions(p256)
    base = log_path.resolve().parent
    copies = _model_copies(base, outputs, [f for f in files if f["role"] == "output_sidecar"])
    return Plan(log_path, destination, model, version, p256, copies)


def _registry_place(log_path: Path, output_name: str) -> tuple[str, str]:
    """(model, version): a daemon log (REGISTRY/<model>/<version>/convrepair/<target>/) keeps its
    place; any other log is named after its output, version 1."""
    parts = log_path.resolve().parent.parts
    if len(parts) >= 4 and parts[-2] == EVIDENCE_DIR and _VERSION.match(parts[-3]):
        return parts[-4], parts[-3]
    return Path(output_name).name.split(".")[0] or "model", "1"


def _model_copies(base: Path, outputs: list[dict], sidecars: list[dict]) -> list[Copy]:
    if len(outputs) == 1:
        root_name = outputs[0]["name"]
        promoted_root = "model" + Path(root_name).suffix
        copies = [Copy("output", root_name, base / root_name, promoted_root)]
    else:  # a model that is a directory (SavedModel): its files keep their places inside it
        root_name = os.path.commonpath([f["name"] for f in outputs])
        promoted_root = "model" + (Path(root_name).suffix or ".savedmodel")
        copies = [Copy("output", f["name"], base / f["name"], f"{promoted_root}/{os.path.relpath(f['name'], root_name)}")
                  for f in outputs]
    for side in sidecars:
        copies.append(Copy("output_sidecar", side["name"], base / side["name"], promoted_root + ".convrepair.json"))
    from convrepair.sidecar import read_sidecar

    try:
        sidecar = read_sidecar(base / root_name)
    except BadInput:  # the sidecar is copied as logged; calibration data is only looked for in a readable one
        sidecar = None
    for step in sidecar.steps if sidecar else []:
        name = step.details.get("calibration_file")
        source = (base / root_name).parent / name if name else None
        if source is not None and source.is_file() and name not in {c.promoted for c in copies}:
            copies.append(Copy("calibration", None, source, name))
    for item in copies:
        if not item.source.is_file():
            raise BadInput("the approved output is not here to promote", item.source)
    return copies


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
            return False, " ".join(str(exc).split())[:200] or type(exc).__name__
    return True, "OpenSSF model-signing bundle verifies"


def check_promotion(result, log_path: Path, log_digest: str, trusted: dict) -> dict[str, Path]:
    """Add the promotion's checks to RESULT; logged name → promoted file, for the digests to be checked."""
    evidence = Path(log_path).resolve().parent
    version_dir = evidence.parent
    envelope, raw = dsse.read_envelope(evidence / PROMOTION_FILE)
    reviewers = {k: v for k, v in trusted.items() if v.role == "reviewer"}
    ok, detail, signer = dsse.verify_signature(envelope, reviewers, trusted)
    if ok and raw != dsse.canonical(envelope):
        ok, detail = False, "promotion statement was altered"
    statement = dsse.statement_of(envelope, evidence / PROMOTION_FILE) if ok else {}
    predicate = statement.get("predicate") or {}
    if ok and statement.get("predicateType") != PROMOTION_PREDICATE:
        ok, detail = False, f"predicateType {statement.get('predicateType')!r}"
    if ok and (predicate.get("log") or {}).get("sha256") != log_digest:
        ok, detail = False, "it promotes another log (digest mismatch)"
    result.add("promotion statement", ok, detail if not ok else f"signed by reviewer {signer[:16]}…")
    if not ok:
        return {}
    located = {}
    for item in predicate.get("files", []):
        path = version_dir / item["promoted"]
        if ".." in Path(item["promoted"]).parts:
            result.add(f"promoted {item['promoted']}", False, "path leaves the version directory")
            continue
        if item.get("logged"):
            located[item["logged"]] = path
        elif not path.is_file() or sha256_file(path) != item["sha256"]:
            result.add(f"promoted {item['promoted']}", False, "missing" if not path.is_file() else "changed since promotion")
    public = trusted[signer].p256_pem
    if public:
        sig_ok, sig_detail = verify_model_dir(version_dir, public)
        result.add("model signature", sig_ok, sig_detail)
    else:
        result.add("model signature", True, f"not checked: the trust file lists no model-signing key for {signer[:16]}…")
    return located
