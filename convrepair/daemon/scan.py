"""One scan of the registry: a job for every ready version and target without a finished result.

The queue's key is the content (sha256 of the model; a remote registry's own version identity),
so a scan may run as often as it likes: what was queued before is never queued again. A model
whose config is invalid gets one failed job per version (target `<config>`) that names the problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convrepair.errors import BadInput
from convrepair.fsutil import combined_digest, file_digests

CONFIG_TARGET = "<config>"


@dataclass
class Queued:
    job: int
    model: str
    version: str
    target: str
    error: str | None = None  # the model's config is invalid: the job is failed at once with this


@dataclass
class ScanResult:
    queued: list[Queued] = field(default_factory=list)
    waiting: int = 0  # versions not ready yet


class Scanner:
    def __init__(self, registry: Any, queue: Any, remote: bool):
        self.registry, self.queue, self.remote = registry, queue, remote
        self._digests: dict[tuple, str] = {}

    def scan(self) -> ScanResult:
        from convrepair.plugins import default_registry

        out = ScanResult()
        known_targets = default_registry().targets()
        for model_dir in self.registry.models():
            try:
                config, config_error = self.registry.model_config(model_dir, known_targets), None
            except BadInput as exc:
                config, config_error = None, exc.one_line()
            for version in self.registry.versions(model_dir):
                pending = [t for t in (config.targets if config else [CONFIG_TARGET])
                           if not (config and self.registry.finished(version, t))]
                if not pending:
                    continue
                if not self.registry.ready(version):
                    out.waiting += version.model_file is not None
                    continue
                digest = self.registry.input_digest(version) if self.remote else self._digest(version.model_file)
                for target in pending:
                    job_id = self.queue.enqueue(version.model, version.version, target, digest)
                    if job_id is None:
                        continue
                    if config_error:
                        self.queue.fail(job_id, config_error)
                    out.queued.append(Queued(job_id, version.model, version.version, target, config_error))
        return out

    def _digest(self, path: Path) -> str:
        """sha256 of a model, re-hashed only when a file's size or mtime changed (scans are frequent)."""
        files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
        key = (str(path), tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
        if key not in self._digests:
            self._digests[key] = combined_digest(file_digests(path))
        return self._digests[key]
