"""Outputs of a contained job: written by the worker into hidden stage folders beside their final
places, moved into place by the parent only after the job succeeded.

The worker may write nowhere else, so it never sees the final paths; the parent checks what it
left (regular files and folders only — no symlinks, which could point anywhere), rewrites the stage
paths in the JSON it wrote (sidecars) and in the report it returned, and renames each entry into
place (atomic per file, same file system). A failed job leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from convrepair.errors import BadInput

_KEEP_BESIDE = (".convrepair.json", ".calibration.npz")  # companions that may be replaced freely


class StagedOutputs:
    """One hidden stage folder per destination folder; use as a context manager."""

    def __init__(self) -> None:
        self.stages: dict[Path, Path] = {}

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(self, *_exc: object) -> None:
        for stage in self.stages.values():
            shutil.rmtree(stage, ignore_errors=True)

    def folder(self, final_dir: Path) -> Path:
        """The stage standing in for `final_dir`."""
        final_dir = Path(final_dir).absolute()
        if final_dir not in self.stages:
            final_dir.mkdir(parents=True, exist_ok=True)
            self.stages[final_dir] = Path(tempfile.mkdtemp(prefix=".convrepair-stage-", dir=final_dir))
        return self.stages[final_dir]

    def place(self, final: Path) -> Path:
        """Where the worker writes what belongs at `final`."""
        final = Path(final).absolute()
        return self.folder(final.parent) / final.name

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

    def publish(self, overwrite: bool = True) -> list[Path]:
        """Move everything the worker wrote into place; BadInput when a model exists and not `overwrite`."""
        moved: list[Path] = []
        for final_dir, stage in self.stages.items():
            entries = sorted(stage.iterdir())
            for entry in entries:
                _refuse_links(entry)
                if not overwrite and (final_dir / entry.name).exists() and not entry.name.endswith(_KEEP_BESIDE):
                    raise BadInput("already exists; pass --force to overwrite it", final_dir / entry.name)
            for entry in entries:
                if entry.name.endswith(".json") and entry.is_file():
                    _rewrite_json(entry, self)
            # companions first, the model last: whoever sees the model finds its sidecar
            for entry in sorted(entries, key=lambda e: not e.name.endswith(_KEEP_BESIDE)):
                destination = final_dir / entry.name
                if destination.is_dir() and not destination.is_symlink():
                    shutil.rmtree(destination)
                os.replace(entry, destination)
                moved.append(destination)
        return moved


def _refuse_links(path: Path) -> None:
    for item in [path, *(path.rglob("*") if path.is_dir() and not path.is_symlink() else [])]:
        mode = os.lstat(item).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise BadInput("the contained job left something that is not a regular file or folder; nothing was written", item)


def _rewrite_json(path: Path, outputs: StagedOutputs) -> None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return
    path.write_text(json.dumps(outputs.relocate(data), indent=2) + "\n")
