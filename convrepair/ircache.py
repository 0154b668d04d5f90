"""The ONNX IRs of models, kept across jobs: exporting a Keras ResNet50 with tf2onnx takes tens of
seconds and gigabytes, and the same source is checked, localized and repaired again and again.

An entry is keyed by everything that changes the export: the model's sha256 and its sidecar,
the export options, and, for each converter on the route, its name, the sha256 of its code and
the versions of the packages its plugin needs (tf2onnx, TensorFlow, Keras …), with convrepair's
own conversion code and the ONNX package. A hit is only a candidate: whoever uses it still holds
the IR to its fidelity on the samples at hand (`convrepair.onnx_ir`).

Entries are written whole or not at all: built in a temporary folder beside the cache, with
`entry.json` (every file's sha256) written last, then renamed into place. A lookup re-hashes
every file; a folder without a readable `entry.json`, or whose files do not hash to it, is no
entry (it is removed). Where the cache lives: `use(path)` for this process (the daemon's worker:
its state dir), else $CONVREPAIR_IR_CACHE, else $XDG_CACHE_HOME/convrepair/ir (~/.cache/…);
"off" turns it off; a contained worker has none unless `use` gives it one (the folder its
parent granted). A cache that cannot be written is skipped, never an error.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convrepair.fsutil import sha256_file

if TYPE_CHECKING:
    from convrepair.model import ModelRef
    from convrepair.plugins import ConverterSpec, PluginRegistry
    from convrepair.sidecar import Sidecar

SCHEMA = "convrepair.ir-cache/v1"
ENV = "CONVREPAIR_IR_CACHE"
ENTRY = "entry.json"
MAX_BYTES = 8 << 30  # oldest entries (by last use) go beyond this
_STALE_SECONDS = 24 * 3600  # a temporary folder this old was left by a writer that died

_chosen: dict[str, Path | None] = {}


def use(path: Path | str | None) -> None:
    """Set this process's cache folder (None or "off": no cache)."""
    _chosen["dir"] = None if path is None or str(path) == "off" else Path(path)


def cache_dir() -> Path | None:
    """The folder this process caches IRs in, or None when caching is off."""
    if "dir" in _chosen:
        return _chosen["dir"]
    from convrepair import contain

    if contain.current() is not None and contain.current().in_force:
        return None  # a contained worker's HOME is its scratch, gone when it ends: only `use` gives it one
    if ENV in os.environ:
        return None if os.environ[ENV] in ("", "off") else Path(os.environ[ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "convrepair" / "ir"


@dataclass(frozen=True)
class Entry:
    path: Path  # the IR file inside the entry
    meta: dict[str, Any]  # route, steps, origin: what `store` was given


def key_for(registry: PluginRegistry, ref: ModelRef, sidecar: Sidecar | None, options: dict | None) -> str | None:
    """The key of the model's IR along its route to ONNX; None when it has none."""
    from convrepair.convert import plan_route
    from convrepair.errors import BadInput

    try:
        route = plan_route(registry, ref.format, "onnx")
    except BadInput:
        return None
    return key_of(registry, ref, sidecar, route, options)


def key_of(registry: PluginRegistry, ref: ModelRef, sidecar: Sidecar | None, route: list[ConverterSpec],
           options: dict | None) -> str:
    """The entry's key: sha256 over everything that changes the export (see the module's text)."""
    from convrepair import convert

    parts = {
        "schema": SCHEMA,
        "source_sha256": ref.sha256,
        "format": ref.format,
        "sidecar": sidecar.to_json() if sidecar is not None else None,
        "options": {str(k): str(v) for k, v in sorted((options or {}).items())},
        "route": [{"converter": conv.name, "code": _code_digest(conv.convert),
                   "versions": _versions(tuple(registry.plugin(conv.plugin).requires))} for conv in route],
        "conversion_code": _code_digest(convert),
        "onnx": _versions(("onnx",)),
        "python": list(sys.version_info[:2]),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def lookup(root: Path | None, key: str) -> Entry | None:
    """The entry under `key` when it is whole (every file hashes to what `entry.json` recorded)."""
    if root is None:
        return None
    folder = root / key
    try:
        meta = json.loads((folder / ENTRY).read_text())
        files = meta["files"]
        whole = (meta.get("schema") == SCHEMA and meta.get("key") == key and meta.get("ir") in files
                 and all(plain_name(name) and sha256_file(folder / name) == digest for name, digest in files.items()))
    except FileNotFoundError:
        return None if not folder.exists() else _discard(folder)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return _discard(folder)
    if not whole:
        return _discard(folder)
    try:
        os.utime(folder / ENTRY)  # last use, for eviction
    except OSError:
        pass
    return Entry(folder / meta["ir"], meta.get("meta") or {})


def store(root: Path | None, key: str, files: list[Path], ir: Path, meta: dict[str, Any]) -> Entry | None:
    """Keep `files` (the IR `ir` among them) under `key`: whole, or not at all. None when the cache
    cannot be written (read-only, full); an entry another process stored first is kept."""
    if root is None:
        return None
    stage = root / f".tmp-{key[:16]}-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        _sweep(root)
        stage.mkdir()
        digests = {}
        for path in files:
            shutil.copy2(path, stage / path.name)
            digests[path.name] = sha256_file(stage / path.name)
        record = {"schema": SCHEMA, "key": key, "ir": ir.name, "files": digests, "meta": meta, "made": time.time()}
        with open(stage / ENTRY, "w") as handle:
            handle.write(json.dumps(record, indent=1))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.rename(stage, root / key)
        except OSError:  # stored meanwhile by another job: theirs stands
            shutil.rmtree(stage, ignore_errors=True)
        _evict(root, MAX_BYTES)
    except OSError:
        shutil.rmtree(stage, ignore_errors=True)
        return None
    return lookup(root, key)


def plain_name(name: str) -> bool:
    """A file name of the entry's own folder (never a path out of it)."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and os.sep not in name


def _discard(folder: Path) -> None:
    """A broken entry is no entry: moved aside (atomic) and removed."""
    aside = folder.with_name(f".tmp-broken-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(folder, aside)
        shutil.rmtree(aside, ignore_errors=True)
    except OSError:
        pass
    return None


def _sweep(root: Path) -> None:
    """Remove temporary folders a writer that died left behind."""
    now = time.time()
    for stale in root.glob(".tmp-*"):
        try:
            if now - stale.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


def _evict(root: Path, limit: int) -> None:
    """Drop the least recently used entries while the cache holds more than `limit` bytes."""
    entries = []
    for folder in root.iterdir():
        if folder.name.startswith(".") or not (folder / ENTRY).is_file():
            continue
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        entries.append(((folder / ENTRY).stat().st_mtime, size, folder))
    total = sum(size for _, size, _ in entries)
    for _, size, folder in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        _discard(folder)
        total -= size


def _code_digest(obj: Any) -> str:
    """sha256 of the source file that defines `obj` (a converter, a module); "" when it has none."""
    try:
        source = inspect.getsourcefile(obj)
    except TypeError:
        source = None
    return _file_digest(source) if source else ""


@functools.lru_cache(maxsize=None)
def _file_digest(path: str) -> str:
    return sha256_file(Path(path))


@functools.lru_cache(maxsize=None)
def _versions(modules: tuple[str, ...]) -> dict[str, str]:
    """The installed versions of the distributions that provide `modules` (no module is imported)."""
    import importlib.metadata

    provides = importlib.metadata.packages_distributions()
    found = {}
    for module in modules:
        for dist in provides.get(module.split(".")[0], [module]):
            try:
                found[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                found[dist] = "absent"
    return found
