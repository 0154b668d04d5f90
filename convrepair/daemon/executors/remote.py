"""A remote registry's job on an executor that ships files (Ray): the daemon fetches the version,
ships it like a directory registry's, signs the results that come back, and publishes them.

Fetching and publishing talk to the registry server and may take long (artifacts are models), so
they run on a small pool of the daemon's threads, never in its loop: `fetch(spec)` and
`publish(...)` return futures the executor polls. The nodes never talk to the registry and never
see its credentials; what comes back is landed, signed and published by the daemon alone.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

REMOTE_KEYS = ("remote", "registry_kind", "registry")


class RemoteStage:
    def __init__(self, threads: int = 2):
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="convrepair-registry")
        self._registries: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def _registry(self, spec: dict[str, Any]) -> Any:
        from convrepair.daemon.registry import open_registry

        key = (spec["registry_kind"], spec["registry"])
        with self._lock:
            if key not in self._registries:
                self._registries[key] = open_registry(*key)
            return self._registries[key]

    def fetch(self, spec: dict[str, Any]) -> Future:
        """-> (the result when it was published before, else None; the job's spec on the local copy)."""
        return self.pool.submit(self._fetch, spec)

    def _fetch(self, spec: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        remote = self._registry(spec)
        done = remote.published(spec["model"], spec["version"], spec["target"])
        if done is not None:  # written back before a crash: never a second log
            return done, spec
        fetched = remote.fetch(spec["model"], spec["version"], spec["target"], Path(spec["downloads"]))
        local = {key: value for key, value in spec.items() if key not in REMOTE_KEYS}
        return None, {**local, "version_dir": str(fetched.version_dir), "model_file": str(fetched.model_file)}

    def publish(self, spec: dict[str, Any], results: Path, result: dict[str, Any]) -> Future:
        """-> the job's result once the signed results folder is written back to the registry."""
        return self.pool.submit(lambda: self._registry(spec).publish(spec["model"], spec["version"], spec["target"],
                                                                     results, result))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def failed(exc: BaseException, seconds: float):
    """A fetch or publish that raised, as the job's outcome (an outage is transient: no attempt spent)."""
    from convrepair.daemon.job import failure_label
    from convrepair.daemon.worker import WorkerResult
    from convrepair.errors import ConvrepairError, exception_text

    transient = bool(getattr(exc, "transient", False))
    text = exc.one_line() if isinstance(exc, ConvrepairError) else f"{type(exc).__name__}: {exception_text(exc, 300)}"
    return WorkerResult(False, None, text, seconds, retry=transient or isinstance(exc, OSError), reason=failure_label(exc),
                        transient=transient)
