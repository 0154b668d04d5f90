"""File helpers: content digests and writes that never leave a half-written file behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def model_files(path: Path) -> list[Path]:
    """Every regular file a model consists of, in a stable order (a directory for SavedModel)."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def file_digests(path: Path) -> dict[str, str]:
    """sha256 of every file, keyed by its path relative to the model (the file name for one file)."""
    if path.is_dir():
        return {p.relative_to(path).as_posix(): sha256_file(p) for p in model_files(path)}
    return {path.name: sha256_file(path)}


def combined_digest(digests: dict[str, str]) -> str:
    """One digest for a multi-file model: sha256 over sorted `name\\0digest\\n` lines."""
    if len(digests) == 1:
        return next(iter(digests.values()))
    lines = "".join(f"{name}\0{value}\n" for name, value in sorted(digests.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success rename it into place, else remove it.

    Works for files and directories (a SavedModel): the caller writes whatever it likes at the
    yielded path. The temporary name starts with a dot so registry scanners ignore it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp = tmp_dir / final.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp}")
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_json_atomic(path: Path, payload: object) -> None:
    with atomic_output(Path(path)) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: object) -> object:
    try:
        import numpy as np  # numpy is a core dependency, imported only when needed here
    except ImportError:  # pragma: no cover
        raise TypeError(f"not JSON serialisable: {type(value)!r}") from None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)!r}")
