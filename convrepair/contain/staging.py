"""Outputs of a contained job: written by the worker into hidden stage folders beside their final
places, moved into place by the parent only after the job succeeded — and only under the names
the parent chose.

The worker may write nowhere else, so it never sees the final paths. The parent names every file
it expects (`place()` names one with its companions; `publish(expected=…)` adds names it computed
itself, never names the worker reported); an entry in a stage under any other name, or anything
that is not a regular file or folder, fails the whole publication in one line and nothing is
moved. An existing output is replaced only with `force`, atomically (rename; a folder is swapped
with renameat2(RENAME_EXCHANGE)); an existing signing key or trust file is never replaced. The
parent removes nothing in the destination: what a stage held (and what a forced replacement
swapped out) goes away with the stage, a folder only the parent and the job could write.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from convrepair.errors import BadInput

COMPANIONS = (".convrepair.json", ".calibration.npz")  # travel with a model; replaced with it
# never replaced by a job's output, whatever the caller named: the trust anchor and signing keys
_NEVER_REPLACED = ("trust.json",)
_NEVER_REPLACED_SUFFIXES = (".key", ".pem", ".pub")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def companions(final: Path) -> list[Path]:
    """`final` and the files that travel beside it (its sidecar, its kept calibration data)."""
    final = Path(final).absolute()
    return [final, *(final.with_name(final.name + suffix) for suffix in COMPANIONS)]


class StagedOutputs:
    """One hidden stage folder per destination folder; use as a context manager."""

    def __init__(self, force: bool = False) -> None:
        self.stages: dict[Path, Path] = {}
        self.expected: set[Path] = set()
        self.force = force

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(self, *_exc: object) -> None:
        for stage in self.stages.values():
            shutil.rmtree(stage, ignore_errors=True)  # our own hidden folder; never follows a link

    def folder(self, final_dir: Path) -> Path:
        """The stage standing in for `final_dir`."""
        final_dir = Path(final_dir).absolute()
        if final_dir not in self.stages:
            final_dir.mkdir(parents=True, exist_ok=True)
            self.stages[final_dir] = Path(tempfile.mkdtemp(prefix=".convrepair-stage-", dir=final_dir))
        return self.stages[final_dir]

    def place(self, final: Path) -> Path:
        """Where the worker writes what belongs at `final` (expected, with its companions).

        Refuses up front, before any work, when `final` exists and `force` was not given."""
        final = Path(final).absolute()
        self.expect([final])
        _refuse_existing(final, self.force)
        return self.folder(final.parent) / final.name

    def expect(self, finals: Iterable[Path]) -> None:
        """Accept these final paths (each with its companions) from the job."""
        for final in finals:
            self.expected.update(companions(final))

    def writes(self) -> list[Path]:
        return list(self.stages.values())

    def relocate(self, value: Any) -> Any:
        """`value` (JSON) with every stage path replaced by its final one."""
        if isinstance(value, str):
            for final_dir, stage in self.stages.items():
                if value == str(stage) or value.startswith(str(stage) + os.sep):
                    return str(final_dir) + value[len(str(stage)):]
            return value
        if isinstance(value, list):
            return [self.relocate(item) for item in value]
        if isinstance(value, dict):
            return {key: self.relocate(item) for key, item in value.items()}
        return value

    def publish(self, expected: Iterable[Path] = (), force: bool | None = None) -> list[Path]:
        """Move what the job wrote into place, all checked first: every entry must be an expected
        name (BadInput naming the first that is not; nothing is moved), a regular file or folder,
        and, unless `force`, not replace an existing output. Returns the published paths."""
        self.expect(expected)
        force = self.force if force is None else force
        plan: list[tuple[Path, Path]] = []
        for final_dir, stage in self.stages.items():
            for entry in sorted(stage.iterdir()):
                destination = final_dir / entry.name
                if destination not in self.expected:
                    raise BadInput(f"the contained job wrote {entry.name!r}, which was not asked for; nothing was written",
                                   final_dir)
                _refuse_links(entry)
                if not entry.name.endswith(COMPANIONS) or not _model_of(destination).exists():
                    _refuse_existing(destination, force)
                _refuse_protected(destination)
                plan.append((entry, destination))
        for entry, _ in plan:
            if entry.name.endswith(".json") and entry.is_file():
                _rewrite_json(entry, self)
        # companions first, the model last: whoever sees the model finds its sidecar
        moved = []
        for entry, destination in sorted(plan, key=lambda pair: not pair[0].name.endswith(COMPANIONS)):
            _replace(entry, destination)
            moved.append(destination)
        return moved


def _model_of(companion: Path) -> Path:
    for suffix in COMPANIONS:
        if companion.name.endswith(suffix):
            return companion.with_name(companion.name[: -len(suffix)])
    return companion


def _refuse_existing(destination: Path, force: bool) -> None:
    if not force and (destination.exists() or destination.is_symlink()):
        raise BadInput("already exists; pass --force to overwrite it", destination)


def _refuse_protected(destination: Path) -> None:
    name = destination.name
    if (destination.exists() or destination.is_symlink()) and (name in _NEVER_REPLACED or name.endswith(_NEVER_REPLACED_SUFFIXES)):
        raise BadInput("is a trust file or key; a job's output never replaces it", destination)


def _replace(entry: Path, destination: Path) -> None:
    """Atomically put `entry` at `destination`: a rename over a file, or an exchange with an
    existing folder (which then lies in the stage and goes with it)."""
    if destination.is_dir() and not destination.is_symlink():
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = getattr(libc, "renameat2", None)
        if renameat2 is None or renameat2(_AT_FDCWD, os.fsencode(entry), _AT_FDCWD, os.fsencode(destination), _RENAME_EXCHANGE) != 0:
            error = ctypes.get_errno() if renameat2 is not None else 0
            raise BadInput(f"cannot replace the folder atomically ({os.strerror(error) if error else 'no renameat2'})", destination)
        return
    os.replace(entry, destination)


def _refuse_links(path: Path) -> None:
    for item in [path, *(path.rglob("*") if path.is_dir() and not path.is_symlink() else [])]:
        info = os.lstat(item)
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            raise BadInput("the contained job left something that is not a regular file or folder; nothing was written", item)
        if stat.S_ISREG(info.st_mode) and info.st_nlink != 1:  # a hard link shares a file with somewhere else
            raise BadInput("the contained job left a hard-linked file; nothing was written", item)


def _rewrite_json(path: Path, outputs: StagedOutputs) -> None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return
    path.write_text(json.dumps(outputs.relocate(data), indent=2) + "\n")
