"""A job's files as one tar, so it can run on a node that does not share the daemon's disk.

Inputs travel under `fs/<absolute path on the daemon>`: the version directory (model, sidecars;
not the results), the model's `convrepair.toml` and the data and calibration files it names, so
the config's relative paths resolve the same way in the worker's scratch. A file the config names
travels only when a job may read it (inside the model's folder or an `--allow-read` folder, never
a key or the daemon's state: `convrepair.daemon.reads`); the job on the node refuses the rest. The results folder
travels back the same way; the daemon moves it into the registry and points every path in its
JSON files (report, job record, sidecars) at the registry, exactly as a local job leaves them.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tomllib
from pathlib import Path
from typing import Any

RESULTS = "convrepair"  # <version>/convrepair/<target>/: never an input


def config_file(version_dir: Path) -> Path:
    return Path(version_dir).parent / "convrepair.toml"


def input_files(version_dir: Path, allowed: list[Path] = (), never: list[Path] = ()) -> list[Path]:
    """What a job reads: the version's files, its model's config and the files the config names
    that a job may read (`allowed` folders besides the model's; `never` these)."""
    from convrepair.daemon.reads import check_reads
    from convrepair.errors import BadInput

    version_dir = Path(os.path.abspath(version_dir))
    files = [p for p in sorted(version_dir.rglob("*"))
             if p.is_file() and p.relative_to(version_dir).parts[0] != RESULTS]
    config = config_file(version_dir)
    files.append(config)
    try:
        raw = tomllib.loads(config.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return files  # the job reports the broken config itself
    for key in ("data", "calibration"):
        value = raw.get(key)
        if isinstance(value, str):
            named = Path(os.path.normpath(config.parent / value))
            try:
                check_reads([named], config.parent, allowed, never)
            except BadInput:
                continue  # not shipped: the job names the problem itself
            if named.is_file() and named not in files:
                files.append(named)
    return files


def pack_inputs(version_dir: Path, allowed: list[Path] = (), never: list[Path] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in input_files(version_dir, allowed, never):
            archive.add(path, arcname=str(mirrored(Path("fs"), path)), recursive=False)
    return buffer.getvalue()


def mirrored(root: Path, path: str | Path) -> Path:
    """Where the daemon's absolute `path` lies under a worker's `root`."""
    return Path(root) / Path(os.path.abspath(path)).relative_to("/")


def pack_dir(path: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(path, arcname=".")
    return buffer.getvalue()


def unpack(data: bytes, into: Path) -> None:
    """Extract with tarfile's `data` filter: no absolute names, no links out, no devices."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as archive:
        archive.extractall(into, filter="data")


def unmirrored(value: Any, root: str) -> Any:
    """`value` with every path under a worker's mirror `root` turned back into the daemon's path."""
    if isinstance(value, str):
        return value[len(root):] if value.startswith(root + "/") else value
    if isinstance(value, dict):
        return {key: unmirrored(item, root) for key, item in value.items()}
    if isinstance(value, list):
        return [unmirrored(item, root) for item in value]
    return value


def land(results: bytes, worker_root: str, final: Path, scratch: Path, extra: dict) -> bool:
    """Move a worker's results folder into the registry as `final`; False when `final` already
    existed (a result landed first: this one is dropped, so there is never a second log).

    Every JSON path under the worker's mirror `worker_root` is turned back into the daemon's own
    (the results folder's become `final`'s), and `extra` (where it ran) is added to the report."""
    import json

    from convrepair.daemon.job import REPORT

    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        unpack(results, scratch)
        for path in scratch.rglob("*.json"):
            content = json.loads(path.read_text())
            moved = unmirrored(content, worker_root)
            if path.name == REPORT and path.parent == scratch:
                moved = dict(moved, **extra)
            if moved != content:
                path.write_text(json.dumps(moved, indent=2))
        if final.exists():
            shutil.rmtree(scratch, ignore_errors=True)
            return False
        os.rename(scratch, final)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        if final.exists():
            return False
        raise
    return True
