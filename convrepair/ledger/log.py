"""The repair log: one in-toto Statement (v1) per job, signed in a DSSE envelope.

Subjects are every input and output file with its sha256 (one per file of a SavedModel), named by
their path relative to the log, as OpenSSF model-signing names a model's files; the predicate is
the composition of the stage results (`convrepair.log/v1`, JSON Schema in schema/).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
import uuid
from pathlib import Path
from typing import Any

from convrepair.fsutil import file_digests
from convrepair.ledger import dsse
from convrepair.ledger.keys import keyid_of, load_private_key
from convrepair.sidecar import read_sidecar

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
LOG_PREDICATE = "https://convrepair.dev/repair-log/v1"
LOG_SCHEMA = "convrepair.log/v1"
SCHEMA_FILE = Path(__file__).parent / "schema" / "repair-log.schema.json"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _tool_versions() -> dict[str, str]:
    from convrepair import __version__
    from convrepair.plugins import package_version

    versions = {"convrepair": __version__, "python": platform.python_version()}
    for name in ("numpy", "onnx", "onnxruntime", "torch", "tensorflow-cpu", "tensorflow", "tf2onnx", "onnx2torch", "cryptography"):
        version = package_version(name)
        if version != "unknown":
            versions[name] = version
    return versions


def _files(role: str, path: Path, base: Path) -> list[dict[str, str]]:
    path = Path(path)
    entries = []
    for name, digest in sorted(file_digests(path).items()):
        full = path / name if path.is_dir() else path
        entries.append({"role": role, "name": os.path.relpath(full, base), "sha256": digest})
    return entries


def build_log(report: dict[str, Any], log_path: Path, started: str, finished: str) -> dict[str, Any]:
    """The in-toto statement for one repair job (report: a convrepair.repair/v1 dict)."""
    base = Path(log_path).resolve().parent
    files: list[dict[str, str]] = []
    for role, ref in (("source", report.get("source") or report.get("model")), ("target", report.get("target")),
                      ("output", report.get("output"))):
        if ref and Path(ref["path"]).exists():
            files += _files(role, Path(ref["path"]).resolve(), base)
            side = Path(ref["path"]).with_name(Path(ref["path"]).name + ".convrepair.json")
            if side.exists():
                files += _files(f"{role}_sidecar", side.resolve(), base)
    target = report.get("target") or report.get("model")
    sidecar = read_sidecar(Path(target["path"])) if target else None
    predicate = {
        "schema": LOG_SCHEMA,
        "job": {"id": str(uuid.uuid4()), "started": started, "finished": finished},
        "machine": {"hostname": platform.node(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "device": report.get("device", "cpu")},
        "tool_versions": _tool_versions(),
        "conversion": sidecar.to_json() if sidecar else None,
        "repair": {key: value for key, value in report.items() if key != "lenses"},
        "lenses": report.get("lenses"),  # reliability of source, converted and repaired model
        "verdict": report.get("verdict"),
        "files": files,
    }
    return dsse.statement([{"name": f["name"], "digest": {"sha256": f["sha256"]}} for f in files], LOG_PREDICATE, predicate)


def validate_log(statement: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when the statement does not follow the shipped schema."""
    import json

    import jsonschema

    jsonschema.validate(statement, json.loads(SCHEMA_FILE.read_text()))


def write_signed_log(report: dict[str, Any], log_path: Path, key_path: Path, started: str) -> Path:
    key = load_private_key(key_path)
    statement = build_log(report, log_path, started, now())
    envelope = dsse.sign(statement, key, keyid_of(key.public_key()))
    write_canonical(log_path, envelope)
    return Path(log_path)


def write_canonical(path: Path, envelope: dict[str, Any]) -> None:
    from convrepair.fsutil import atomic_output

    with atomic_output(Path(path)) as tmp:
        tmp.write_bytes(dsse.canonical(envelope))

