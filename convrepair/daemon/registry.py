"""The built-in registry: a directory in NVIDIA Triton's model-repository layout.

    REGISTRY/<model>/convrepair.toml
    REGISTRY/<model>/<version>/model.<ext>        version: a positive integer, no leading 0
    REGISTRY/<model>/<version>/convrepair/<target>/   written by convrepair (temp dir, then rename)

A version is ready when it carries a `_COMPLETE` marker (producers that write `.tmp-<uuid>/`
and rename it), or when its files have not changed for the quiet period across two scans.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

VERSION = re.compile(r"^[1-9][0-9]*$")
CONFIG = "convrepair.toml"
RESULTS = "convrepair"
MARKER = "_COMPLETE"


@dataclass(frozen=True)
class Version:
    model: str
    version: str
    path: Path
    model_file: Path | None


class DirectoryRegistry:
    def __init__(self, root: Path, quiet_seconds: float = 5.0):
        self.root = Path(root)
        self.quiet_seconds = quiet_seconds
        self._last: dict[Path, tuple] = {}

    def models(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir() and (p / CONFIG).is_file()) if self.root.is_dir() else []

    def versions(self, model_dir: Path) -> list[Version]:
        out = []
        for entry in sorted(model_dir.iterdir(), key=lambda p: (len(p.name), p.name)):
            if entry.is_dir() and VERSION.match(entry.name):
                files = [p for p in entry.iterdir() if p.name.startswith("model.") and not p.name.endswith(".convrepair.json")]
                out.append(Version(model_dir.name, entry.name, entry, files[0] if files else None))
        return out

    def version(self, model: str, version: str) -> Version:
        for candidate in self.versions(self.root / model):
            if candidate.version == version:
                return candidate
        raise KeyError(f"{model}/{version}")

    def ready(self, version: Version) -> bool:
        """Complete by marker, or unchanged for the quiet period across two scans."""
        if version.model_file is None:
            return False
        if (version.path / MARKER).exists():
            return True
        snapshot = _snapshot(version.path)
        previous = self._last.get(version.path)
        self._last[version.path] = snapshot
        newest = max((mtime for _, _, mtime in snapshot), default=0)
        return previous == snapshot and time.time() - newest / 1e9 >= self.quiet_seconds

    def results_dir(self, version: Version, target: str) -> Path:
        return version.path / RESULTS / target


def _snapshot(path: Path) -> tuple:
    return tuple(sorted(
        (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in path.rglob("*") if p.is_file() and RESULTS not in p.relative_to(path).parts
    ))
