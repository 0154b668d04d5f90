"""The built-in registry: a directory in NVIDIA Triton's model-repository layout.

    REGISTRY/<model>/convrepair.toml
    REGISTRY/<model>/<version>/model.<ext>        version: a positive integer, no leading 0
    REGISTRY/<model>/<version>/convrepair/<target>/   written by convrepair (temp dir, then rename)

A version is ready when it carries a `_COMPLETE` marker (producers that write `.tmp-<uuid>/`
and rename it), or when its files have not changed — size, mtime and content hash — for the quiet
period *and* its model parses as a complete model (`convrepair.daemon.readiness`). A version that
does not parse is waited for, not failed: a copy may pause for longer than the quiet period. Only
when it stays unchanged and unparseable for the parse grace too is it handed on, so its job fails
once with the parser's reason.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from convrepair.daemon.config import ModelConfig

from convrepair.fsutil import combined_digest, file_digests

log = logging.getLogger("convrepair.daemon")

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


@dataclass
class _Watch:
    """What the scans saw of one version's files: since when unchanged, their hashes, whether it parses."""

    snapshot: tuple
    since: float
    digest: str | None = None
    digest_at: float = 0.0
    problem: str | None = None
    parsed: bool = False


class DirectoryRegistry:
    problem = None  # a local directory has no outages (a remote registry says here why it cannot be reached)

    def __init__(self, root: Path, quiet_seconds: float = 5.0, parse_grace_seconds: float | None = None,
                 allow_read: tuple[Path, ...] = ()):
        self.root = Path(root)
        self.allow_read = tuple(allow_read)  # folders a config may name besides its model's own
        self.quiet_seconds = quiet_seconds
        #: how long an unchanged version that does not parse is waited for before its job may fail on it
        self.parse_grace_seconds = 10 * quiet_seconds if parse_grace_seconds is None else parse_grace_seconds
        self._watch: dict[Path, _Watch] = {}

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
        """Complete by marker, or unchanged (stat, then hash) for the quiet period and parsing whole."""
        if version.model_file is None:
            return False
        if (version.path / MARKER).exists():
            return True
        now, snapshot = time.time(), _snapshot(version.path)
        seen = self._watch.get(version.path)
        if seen is None or seen.snapshot != snapshot:  # new or still being written: hash nothing yet
            self._watch[version.path] = _Watch(snapshot, now)
            return False
        if seen.digest is None:  # stat unchanged across two scans: the first content hash
            seen.digest, seen.digest_at = self._hash(version), now
        if now - seen.since < self.quiet_seconds or now - seen.digest_at < self.quiet_seconds:
            return False
        if not seen.parsed:
            digest = self._hash(version) if self.quiet_seconds > 0 else seen.digest
            if digest != seen.digest:  # rewritten in place with the same size and mtime
                self._watch[version.path] = _Watch(snapshot, now)
                return False
            from convrepair.daemon.readiness import incomplete_reason
            from convrepair.plugins import default_registry

            seen.problem, seen.parsed = incomplete_reason(version.model_file, default_registry().detect_format), True
            if seen.problem:
                log.info("waiting for a whole model", extra={"event": "waiting", "model": version.model,
                                                               "version": version.version, "reason": f"{version.model_file.name} {seen.problem}"})
        if seen.problem is None:
            return True
        return now - seen.since >= self.quiet_seconds + self.parse_grace_seconds

    @staticmethod
    def _hash(version: Version) -> str:
        """The model's content hash (the other files of the version are watched by their stat)."""
        return combined_digest(file_digests(version.model_file))

    def results_dir(self, version: Version, target: str) -> Path:
        return version.path / RESULTS / target

    def model_config(self, model_dir: Path, known_targets: list[str]) -> ModelConfig:
        from convrepair.daemon.config import load_model_config

        return load_model_config(Path(model_dir) / CONFIG, known_targets, allowed=self.allow_read)

    def finished(self, version: Version, target: str) -> bool:
        return self.results_dir(version, target).exists()


@dataclass(frozen=True)
class Fetched:
    """A remote version made local for one job, in the directory registry's layout:
    `version_dir.parent / convrepair.toml`, `version_dir / model.<ext>`, results under
    `version_dir / convrepair / <target>` — so the job runs exactly as for a directory."""

    version_dir: Path
    model_file: Path


class RemoteRegistry(Protocol):
    """What a registry that is not a local directory adds (`remote = True`), besides `models()`,
    `versions(model)`, `version(model, version)`, `ready(version)`, `model_config(model,
    known_targets)`, `finished(version, target)`:

        input_digest(version)                    the queue key of a version's content
        published(model, version, target)        the job's result when it was written back before
                                                 (asked of the registry itself, not of a cache)
        fetch(model, version, target, downloads) its artifacts into `downloads` -> Fetched
        publish(model, version, target, results, result)
                                                 write the results back; returns the job's result

    The job runs in a worker with `run_remote_job`; a reviewer's decisions and `verify` reach the
    registry through `convrepair.ledger` hooks the plugin provides (see plugins/mlflow)."""

    remote: bool

    def input_digest(self, version: Any) -> str: ...

    def published(self, model: str, version: str, target: str) -> dict[str, Any] | None: ...

    def fetch(self, model: str, version: str, target: str, downloads: Path) -> Fetched: ...

    def publish(self, model: str, version: str, target: str, results: Path, result: dict[str, Any]) -> dict[str, Any]: ...


def open_registry(kind: str, location: str, **options: Any) -> Any:
    """The registry plugin `kind` opened at `location` (a directory, a tracking URI …)."""
    from convrepair.errors import BadInput
    from convrepair.plugins import default_registry

    kinds = default_registry().registries
    if kind not in kinds:
        raise BadInput(f"unknown registry kind '{kind}' (available: {', '.join(sorted(kinds))})")
    return kinds[kind].open(location, **options)


def registry_for_uri(uri: str, location: str | None = None) -> Any | None:
    """The registry whose plugin resolves a log URI (`models:/NAME@approved` → mlflow), opened at
    `location` (None: the plugin's default, e.g. $MLFLOW_TRACKING_URI); None for a local path.
    The opened registry provides `decide(uri, key, decision, text, trust, promote)` and
    `verify_log(uri, trust, require_approval, chain)` for approve/reject/verify."""
    from convrepair.plugins import default_registry

    for spec in default_registry().registries.values():
        if spec.uri_schemes and str(uri).startswith(spec.uri_schemes):
            return spec.open(location)
    return None


def run_remote_job(spec: dict[str, Any], run_local: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """A job on a remote registry's version: nothing when it was published before (a crash after
    the write-back never makes a second log); otherwise fetch it, run the local job on the copy,
    and publish what it wrote."""
    import tempfile

    model, version, target = spec["model"], spec["version"], spec["target"]
    remote = open_registry(spec["registry_kind"], spec["registry"])
    done = remote.published(model, version, target)
    if done is not None:
        return done
    downloads = Path(spec["downloads"]) if spec.get("downloads") else Path(tempfile.gettempdir()) / "convrepair-downloads"
    fetched = remote.fetch(model, version, target, downloads)
    local = {key: value for key, value in spec.items() if key not in ("remote", "registry_kind", "registry")}
    result = run_local({**local, "version_dir": str(fetched.version_dir), "model_file": str(fetched.model_file)})
    return remote.publish(model, version, target, Path(result["results"]), result)


def _snapshot(path: Path) -> tuple:
    """(name, size, mtime) of every file of a version, convrepair's own results left out (not walked)."""
    entries = []
    for top in path.iterdir():
        if top.name == RESULTS and top.is_dir():
            continue
        for p in (top.rglob("*") if top.is_dir() else [top]):
            if p.is_file():
                stat = p.stat()
                entries.append((str(p.relative_to(path)), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


def is_result_path(root: Path, path: str | Path) -> bool:
    """Whether `path` lies in convrepair's own output (REGISTRY/MODEL/VERSION/convrepair/...): the
    daemon's writes there must not wake the daemon again."""
    try:
        parts = Path(path).relative_to(root).parts
    except ValueError:
        return False
    return len(parts) >= 3 and parts[2] == RESULTS and bool(VERSION.match(parts[1]))
