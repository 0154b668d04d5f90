"""The MLflow Model Registry as a convrepair registry: poll for new versions, fetch, write back.

MLflow sends no events, so `models()` polls `search_model_versions` every `poll_seconds`, newest
first, reading pages only until it reaches versions older than its cursor (the highest
`last_updated_timestamp` seen, less an overlap). It watches the registered models named in
`models=` and every one tagged `convrepair.enabled=true`. A model's `convrepair.toml` is the
content of its tag `convrepair.toml`, or the artifact its tag `convrepair.toml_artifact` names;
`data`/`calibration` in it are paths inside the version's artifacts or artifact URIs.

A job fetches the version and publishes its results through `transfer.py`; reviewers reach it
through `review.py`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from convrepair.daemon.logs import event
from convrepair.daemon.registry import Fetched
from convrepair.errors import BadInput
from convrepair_plugins.mlflow.client import RegistryError, Server

TAG_ENABLED = "convrepair.enabled"
TAG_CONFIG = "convrepair.toml"
TAG_CONFIG_ARTIFACT = "convrepair.toml_artifact"
TAG_PROMOTED_FROM = "convrepair.promoted_from"
EXPERIMENT = "convrepair"
REPORT, LOG = "repair.json", "repair.log.dsse.json"
OVERLAP_MS = 5000  # versions updated within this much of the cursor are read again (clock skew)
URI_PREFIXES = ("runs:/", "models:/", "mlflow-artifacts:/", "s3://", "gs://", "wasbs://", "hdfs://", "dbfs:/")


@dataclass
class MlflowVersion:
    model: str
    version: str
    status: str
    source: str
    tags: dict[str, str] = field(default_factory=dict)
    updated: int = 0

    @property
    def model_file(self) -> str | None:
        """The source URI while it can become ready (None once registration failed)."""
        return None if self.status == "FAILED_REGISTRATION" else self.source

    @property
    def path(self) -> str:
        return f"models:/{self.model}/{self.version}"


class MlflowRegistry:
    """`convrepair daemon TRACKING_URI --registry-kind mlflow` (options also as `?models=a,b&poll_seconds=5`)."""

    remote = True

    def __init__(self, location: str, poll_seconds: float = 10.0, models: tuple[str, ...] = (), retries: int = 3,
                 **_options: Any):
        parts = urlsplit(location)
        query = parse_qs(parts.query)
        self.uri = urlunsplit(parts._replace(query=""))
        self.poll_seconds = float(query.get("poll_seconds", [poll_seconds])[0])
        self.named = set(models) | {m for value in query.get("models", []) for m in value.split(",") if m}
        self.server = Server(self.uri, retries=int(query.get("retries", [retries])[0]))
        self._versions: dict[tuple[str, str], MlflowVersion] = {}
        self._configs: dict[str, str | None] = {}
        self._parsed: dict[tuple[str, str | None], Any] = {}
        self._polled: set[str] = set()
        self._cursor = 0
        self._next_poll = 0.0
        self._failures = 0
        self.problem: str | None = None  # why the last poll could not reach the server (None: it could)

    @property
    def client(self):
        return self.server.client

    # --- discovery (the daemon's scan) -------------------------------------------------------

    def models(self) -> list[str]:
        self.poll()
        return sorted(self._configs)

    def versions(self, model: str) -> list[MlflowVersion]:
        return sorted((v for (name, _), v in self._versions.items() if name == model), key=lambda v: int(v.version))

    def version(self, model: str, version: str) -> MlflowVersion:
        """As last polled; a version not seen yet is looked up by its job, never here (the daemon loop
        must not wait on the server)."""
        return self._versions.get((model, version)) or MlflowVersion(model, version, "UNKNOWN", "")

    def ready(self, version: MlflowVersion) -> bool:
        return version.status == "READY"

    def finished(self, version: MlflowVersion, target: str) -> bool:
        return f"convrepair.{target}.verdict" in version.tags

    def input_digest(self, version: MlflowVersion) -> str:
        """Versions are immutable in MLflow: the queue key is the version's identity and source."""
        return hashlib.sha256("\0".join(("mlflow", self.uri, version.model, version.version, version.source)).encode()).hexdigest()

    def model_config(self, model: str, known_targets: list[str]):
        """The model's convrepair.toml, validated (its data files are fetched by the job)."""
        text = self._configs.get(model)
        key = (model, text)
        if key not in self._parsed:
            self._parsed[key] = self._parse_config(model, text, known_targets)
        if isinstance(self._parsed[key], BadInput):
            raise self._parsed[key]
        return self._parsed[key]

    def poll(self, force: bool = False) -> None:
        """Read what changed since the cursor; an unreachable server is logged and tried again later."""
        now = time.monotonic()
        if now < self._next_poll and not force:
            return
        try:
            configs = self._enabled_models()
            new = sorted(name for name in configs if name not in self._polled)
            old = sorted(name for name in configs if name in self._polled)
            found = self._search(new, 0) + self._search(old, self._cursor - OVERLAP_MS)
        except RegistryError as exc:
            self.problem = exc.one_line()
            self._failures += 1
            delay = min(self.poll_seconds * 2 ** self._failures, 300.0)
            self._next_poll = now + delay
            event("registry-unreachable", logging.WARNING, registry=self.uri, error=exc.one_line(), retry_in_s=delay)
            return
        self._failures, self._next_poll, self.problem = 0, now + self.poll_seconds, None
        self._configs = configs
        self._polled |= set(new)
        for mv in found:
            self._cursor = max(self._cursor, int(mv.last_updated_timestamp or 0))
            if TAG_PROMOTED_FROM not in (mv.tags or {}):  # our own promoted copies are not jobs
                self._versions[(mv.name, str(mv.version))] = _version(mv)

    def recovered(self) -> None:
        """A job just reached the server: the next scan polls at once instead of waiting out the backoff."""
        if self.problem is not None:
            self._failures, self._next_poll = 0, 0.0

    def _enabled_models(self) -> dict[str, str | None]:
        """Name → convrepair.toml content (None: no config) of every model convrepair watches."""
        client = self.client
        found = {}
        token = None
        while True:
            page = self.server.call("listing registered models", lambda: client.search_registered_models(
                filter_string=f"tags.`{TAG_ENABLED}` = 'true'", max_results=1000, page_token=token), retries=0)
            found.update({rm.name: rm.tags or {} for rm in page})
            token = page.token
            if not token:
                break
        for name in self.named - set(found):
            try:
                found[name] = self.server.call(f"reading registered model {name}", lambda n=name: client.get_registered_model(n),
                                               retries=0).tags or {}
            except RegistryError as exc:
                if exc.transient:
                    raise
                event("model-unavailable", logging.WARNING, model=name, error=exc.one_line())
        return {name: self.config_text(name, tags) for name, tags in found.items()}

    def config_text(self, model: str, tags: dict[str, str]) -> str | None:
        if TAG_CONFIG in tags:
            return tags[TAG_CONFIG]
        if TAG_CONFIG_ARTIFACT not in tags:
            return None
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = self.server.download(tags[TAG_CONFIG_ARTIFACT], tmp, f"downloading the config of {model}")
            return Path(path).read_text()

    def _search(self, names: list[str], since_ms: int) -> list:
        """Versions of `names` updated at or after `since_ms`, newest first, reading no older page."""
        out = []
        quoted = [name for name in names if "'" not in name]
        for start in range(0, len(quoted), 50):
            where = "name IN (" + ", ".join(f"'{name}'" for name in quoted[start:start + 50]) + ")"
            token = None
            while True:
                page = self.server.call("searching model versions", lambda: self.client.search_model_versions(
                    where, max_results=1000, order_by=["last_updated_timestamp DESC"], page_token=token), retries=0)
                older = [mv for mv in page if int(mv.last_updated_timestamp or 0) < since_ms]
                out += [mv for mv in page if int(mv.last_updated_timestamp or 0) >= since_ms]
                token = page.token
                if older or not token:
                    break
        return out

    def _parse_config(self, model: str, text: str | None, known_targets: list[str]):
        import tempfile

        from convrepair.daemon.config import load_model_config

        where = f"models:/{model} (tag {TAG_CONFIG} on {self.uri})"
        if text is None:
            return BadInput(f"{where}: no convrepair config: tag the registered model with {TAG_CONFIG} "
                            f"(the file's content) or {TAG_CONFIG_ARTIFACT} (an artifact URI)")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "convrepair.toml"
            path.write_text(text)
            try:
                return load_model_config(path, known_targets, check_files=False)
            except BadInput as exc:
                return BadInput(f"{where}: {exc.message}")

    # --- one job (convrepair.daemon.registry.run_remote_job): see transfer.py ------------------

    def published(self, model: str, version: str, target: str) -> dict[str, Any] | None:
        from convrepair_plugins.mlflow import transfer

        return transfer.published(self, model, version, target)

    def fetch(self, model: str, version: str, target: str, downloads: Path) -> Fetched:
        from convrepair_plugins.mlflow import transfer

        return transfer.fetch(self, model, version, target, downloads)

    def publish(self, model: str, version: str, target: str, results: Path, result: dict[str, Any]) -> dict[str, Any]:
        from convrepair_plugins.mlflow import transfer

        return transfer.publish(self, model, version, target, results, result)

    # --- reviewer hooks (convrepair.daemon.registry.registry_for_uri) -------------------------

    def decide(self, uri: str, key: Path, decision: str, text: str, trust: Path, promote: str | None = None) -> dict[str, Any]:
        from convrepair_plugins.mlflow.review import decide

        alias = str(promote).lstrip("@") if promote else None
        return decide(self, uri, key, decision, text, trust, alias or None)

    def verify_log(self, uri: str, trust: Path, require_approval: bool = False, chain: bool = False,
                   pinned: Path | None = None):
        from convrepair_plugins.mlflow.review import verify_uri

        return verify_uri(self, uri, trust, require_approval, chain, pinned)

    def with_target(self, uri: str, target: str | None) -> str:
        """URI narrowed to TARGET (`--target`): models:/NAME/VERSION/TARGET."""
        from convrepair_plugins.mlflow.review import with_target

        return with_target(uri, target)

    def open_log(self, uri: str, trust: Path):
        """Context manager: the log behind URI as a local file (for `show`)."""
        from convrepair_plugins.mlflow.review import open_log

        return open_log(self, uri, trust)

    def list_logs(self, uri: str, trust: Path) -> list[dict[str, Any]]:
        """`review --registry models:/NAME`: every log of the model, verified."""
        from convrepair_plugins.mlflow.review import list_model

        return list_model(self, uri, trust)


def _version(mv) -> MlflowVersion:
    return MlflowVersion(mv.name, str(mv.version), str(mv.status), mv.source or "", dict(mv.tags or {}),
                         int(mv.last_updated_timestamp or 0))


def folder_name(name: str) -> str:
    """A folder name for a model or version name (any characters) that cannot climb out."""
    clean = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".") or "_"
    return clean if clean == name else f"{clean}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
