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

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convrepair.errors import BadInput
from convrepair.fsutil import sha256_file
from convrepair.ledger import dsse
from convrepair.ledger.keys import check_private_permissions, p256_path
from convrepair.ledger.log import now
from convrepair.ledger.modelsign import EVIDENCE_DIR, SIGNATURE_FILE, sign_model_dir, verify_model_dir  # noqa: F401 - re-exported

PROMOTION_FILE = "promotion.dsse.json"
PROMOTION_PREDICATE = "https://convrepair.dev/promotion/v1"
_VERSION = re.compile(r"^[1-9][0-9]*$")
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Copy:
    role: str
    logged: str | None  # the name in the repair log (None: travels along, e.g. calibration data)
    source: Path
    promoted: str  # relative to the version directory
    sha256: str  # what the copy must hash to: the logged digest (calibration: the logged sidecar's)


class Changed(BadInput):
    """A file to promote no longer has the digest the verified log names: nothing is signed (exit 1)."""

    exit_code = 1


@dataclass
class Plan:
    log_path: Path
    destination: Path
    model: str
    version: str
    p256_key: Path
    raw_log: bytes  # the log's bytes as verified: the promoted copy is these, not a second read
    copies: list[Copy] = field(default_factory=list)
    _staged: Path | None = field(default=None, repr=False)
    _lock: Any = field(default=None, repr=False)

    def stage(self) -> None:
        """Copy every file beside the version's final place and check each copy against the logged
        digest, before anything is signed. Holds REPO/MODEL/.VERSION.lock until sealed or discarded;
        under it, a hidden `.VERSION.*.tmp` left by a promotion that was killed is removed."""
        parent = self.destination.parent
        parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(parent / f".{self.version}.lock", "a+")  # noqa: SIM115 - held until seal/discard
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            for stale in parent.glob(f".{self.version}.*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
            if self.destination.exists():
                raise BadInput("already exists; refusing to overwrite a promoted version", self.destination)
            self._staged = Path(tempfile.mkdtemp(prefix=f".{self.version}.", suffix=".tmp", dir=parent))
            tmp = self._staged / self.version
            tmp.mkdir()
            for item in self.copies:
                (tmp / item.promoted).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(item.source, tmp / item.promoted)
                actual = sha256_file(tmp / item.promoted)
                if actual != item.sha256:
                    raise Changed(f"changed since the log was verified (sha256 {actual} ≠ logged {item.sha256}); "
                                  "nothing was approved, signed or promoted", item.source)
        except BaseException:
            self.discard()
            raise

    def seal(self, key, tlog, entry) -> Path:
        """Sign the staged version and rename it into place (key: the reviewer's Ed25519 key;
        entry: the approval in TLOG)."""
        if self._staged is None:
            self.stage()
        tmp = self._staged / self.version
        try:
            evidence = tmp / EVIDENCE_DIR
            evidence.mkdir()
            (evidence / self.log_path.name).write_bytes(self.raw_log)
            tlog.snapshot_to(evidence)
            files = [{"role": c.role, "logged": c.logged, "promoted": c.promoted, "sha256": c.sha256} for c in self.copies]
            predicate = {"model": self.model, "version": self.version, "time": now(),
                         "log": {"name": f"{EVIDENCE_DIR}/{self.log_path.name}", "sha256": hashlib.sha256(self.raw_log).hexdigest()},
                         "decision": {"entry": entry.path.name, "index": entry.index,
                                      "sha256": hashlib.sha256(entry.data).hexdigest()},
                         "files": files}
            statement = dsse.statement([{"name": f["promoted"], "digest": {"sha256": f["sha256"]}} for f in files],
                                       PROMOTION_PREDICATE, predicate)
            (evidence / PROMOTION_FILE).write_bytes(dsse.canonical(dsse.sign(statement, key, _keyid(key))))
            sign_model_dir(tmp, self.p256_key)
            os.rename(tmp, self.destination)  # never over an existing version (checked under the lock)
        finally:
            self.discard()
        return self.destination

    def carry_out(self, key, tlog, entry) -> Path:
        self.stage()
        return self.seal(key, tlog, entry)

    def discard(self) -> None:
        if self._staged is not None:
            shutil.rmtree(self._staged, ignore_errors=True)
            self._staged = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    @property
    def promoted_log(self) -> Path:
        return self.destination / EVIDENCE_DIR / self.log_path.name


def _keyid(key) -> str:
    from convrepair.ledger.keys import keyid_of

    return keyid_of(key.public_key())


def plan(log_path: Path, repository: Path, key_path: Path, model: str | None = None, version: str | None = None,
         verified=None) -> Plan:
    """Everything promotion will copy, checked before the approval is written. VERIFIED (a
    verify.Verification that holds) supplies the statement and the log's bytes as verified."""
    log_path = Path(verified.log) if verified is not None else Path(log_path)
    if verified is not None:
        statement, raw = verified.statement, verified.raw
    else:
        envelope, raw = dsse.read_envelope(log_path)
        statement = dsse.statement_of(envelope, log_path)
    files = (statement.get("predicate") or {}).get("files", [])
    outputs = [f for f in files if f["role"] == "output"]
    if not outputs:
        raise BadInput("the log names no output to promote (nothing was repaired)", log_path)
    default_model, default_version = _registry_place(log_path, files)
    model, version = model or default_model, version or default_version
    if not _MODEL.match(model):
        raise BadInput(f"model name {model!r} is not a Triton model name (letters, digits, _ . -); pass --model NAME")
    if not _VERSION.match(version):
        raise BadInput(f"version {version!r} is not a Triton version (a positive integer); pass --version N")
    destination = Path(repository) / model / version
    if destination.exists():
        raise BadInput("already exists; refusing to overwrite a promoted version (pass --version N for another)", destination)
    p256 = p256_path(Path(key_path))
    if not p256.is_file():
        raise BadInput(f"promotion signs the model with OpenSSF model-signing, which needs the P-256 key {p256.name} "
                       f"beside the reviewer key (`convrepair keys init --name {Path(key_path).stem} --dir "
                       f"{Path(key_path).parent}` adds it)", key_path)
    check_private_permissions(p256)
    base = log_path.resolve().parent
    copies = _model_copies(base, outputs, [f for f in files if f["role"] == "output_sidecar"])
    return Plan(log_path, destination, model, version, p256, raw, copies)


def _registry_place(log_path: Path, files: list[dict]) -> tuple[str, str]:
    """(model, version): a daemon log (REGISTRY/<model>/<version>/convrepair/<target>/) keeps its
    place; any other log is named after its source model (my_model.keras → my_model), version 1."""
    parts = log_path.resolve().parent.parts
    if len(parts) >= 4 and parts[-2] == EVIDENCE_DIR and _VERSION.match(parts[-3]):
        return parts[-4], parts[-3]
    sources = [f["name"] for f in files if f["role"] == "source"] or [f["name"] for f in files if f["role"] == "output"]
    stem = Path(os.path.commonpath(sources)).name.split(".")[0] if sources else ""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip("_.-")
    return stem or "model", "1"


def _model_copies(base: Path, outputs: list[dict], sidecars: list[dict]) -> list[Copy]:
    if len(outputs) == 1:
        root_name = outputs[0]["name"]
        promoted_root = "model" + Path(root_name).suffix
        copies = [Copy("output", root_name, base / root_name, promoted_root, outputs[0]["sha256"])]
    else:  # a model that is a directory (SavedModel): its files keep their places inside it
        root_name = os.path.commonpath([f["name"] for f in outputs])
        promoted_root = "model" + (Path(root_name).suffix or ".savedmodel")
        copies = [Copy("output", f["name"], base / f["name"], f"{promoted_root}/{os.path.relpath(f['name'], root_name)}",
                       f["sha256"]) for f in outputs]
    for side in sidecars:
        copies.append(Copy("output_sidecar", side["name"], base / side["name"], promoted_root + ".convrepair.json", side["sha256"]))
    for name, digest in _calibration(base, sidecars):
        source = (base / root_name).parent / name
        if source.is_file() and name not in {c.promoted for c in copies}:
            copies.append(Copy("calibration", None, source, name, digest))
    for item in copies:
        if not item.source.is_file():
            raise BadInput("the approved output is not here to promote", item.source)
    return copies


def _calibration(base: Path, sidecars: list[dict]) -> list[tuple[str, str]]:
    """(file, sha256) of the calibration data the logged sidecar names, read from bytes that hash
    to the logged digest (a sidecar changed since the log was signed names nothing)."""
    from convrepair.sidecar import Sidecar

    found = []
    for side in sidecars:
        try:
            data = (base / side["name"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != side["sha256"]:
                continue
            sidecar = Sidecar.from_json(json.loads(data))
        except (OSError, ValueError, TypeError, BadInput):
            continue
        for step in sidecar.steps:
            name, digest = step.details.get("calibration_file"), step.details.get("calibration_sha256")
            if isinstance(name, str) and isinstance(digest, str) and "/" not in name and name not in ("", ".", ".."):
                found.append((name, digest))
    return found


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
    else:  # no soft pass: a signature nobody can check is not a signature that holds
        result.add("model signature", False, f"the trust file lists no model-signing (P-256) key for reviewer {signer[:16]}…; "
                   "add it (`keys init` writes NAME.p256.pub; `--trust` lists it as model_signing_public_key)")
    return located
