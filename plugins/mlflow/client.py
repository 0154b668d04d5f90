"""One MLflow tracking server, reached only through MLflow's client API, with one-line errors.

Every call goes through `Server.call(what, fn)`: transient failures (server unreachable, 5xx,
timeouts) are retried with exponential backoff; what stays broken, or was never going to work
(a missing artifact, a permission error), becomes one `RegistryError` line naming the server
and what was being done. Importing this module imports mlflow: import it lazily.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

from convrepair.errors import ConvrepairError, exception_text

# Before mlflow is imported: no telemetry, no progress bars on our stdout, no run URLs printed,
# and MLflow's own HTTP retries kept short (ours below back off; a job must not hang for minutes).
for _name, _value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"),
                      ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
                      ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true"),
                      ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                      ("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")):
    os.environ.setdefault(_name, _value)

import mlflow  # noqa: E402  (after the environment above)
from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

T = TypeVar("T")
PERMANENT = {"RESOURCE_DOES_NOT_EXIST", "PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_PARAMETER_VALUE",
             "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST", "NOT_FOUND", "INVALID_STATE"}
KIND = {"RESOURCE_DOES_NOT_EXIST": "not found", "NOT_FOUND": "not found", "PERMISSION_DENIED": "permission denied",
        "UNAUTHENTICATED": "permission denied (not authenticated)"}


class RegistryError(ConvrepairError):
    """The MLflow server could not do what a job or a reviewer asked (one line, names the server)."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class Server:
    """A tracking URI and its client; `retries` transient failures, backing off 1, 2, 4 … seconds."""

    def __init__(self, tracking_uri: str, retries: int = 3, backoff: float = 1.0):
        self.uri = tracking_uri
        self.retries = retries
        self.backoff = backoff
        # models:/ and runs:/ URIs resolve through the process's global URIs: point both here,
        # never at a default ./mlruns or ./mlflow.db
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def call(self, what: str, fn: Callable[[], T], retries: int | None = None) -> T:
        retries = self.retries if retries is None else retries
        delay = self.backoff
        for attempt in range(retries + 1):
            try:
                return fn()
            except RegistryError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure becomes one line
                error = self.error(what, exc)
                if not error.transient or attempt == retries:
                    raise error from None
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def error(self, what: str, exc: BaseException) -> RegistryError:
        code = getattr(exc, "error_code", None)
        status = getattr(exc, "get_http_status_code", lambda: None)() if isinstance(exc, MlflowException) else None
        text = exception_text(exc, 200)
        if code in KIND or status in (401, 403):
            kind = KIND.get(code, "permission denied")
            return RegistryError(f"mlflow {self.uri}: {what}: {kind}: {text}")
        if code in PERMANENT:
            return RegistryError(f"mlflow {self.uri}: {what}: {text}")
        if _unreachable(exc):
            return RegistryError(f"mlflow {self.uri}: {what}: server unreachable ({_reason(exc)})", transient=True)
        return RegistryError(f"mlflow {self.uri}: {what}: {text}", transient=status is None or status >= 500)

    def download(self, artifact_uri: str, destination: str, what: str) -> str:
        """The MLflow artifact API (runs:/, models:/, mlflow-artifacts:/ URIs), never the store itself."""
        return self.call(what, lambda: mlflow.artifacts.download_artifacts(
            artifact_uri=artifact_uri, dst_path=destination, tracking_uri=self.uri))


def _unreachable(exc: BaseException) -> bool:
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return any(marker in text for marker in ("Max retries exceeded", "Connection refused", "Failed to establish",
                                             "Read timed out", "RemoteDisconnected"))


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Read timed out", "Name or service not known", "RemoteDisconnected"):
        if marker in text:
            return marker.lower()
    return exception_text(exc, 120)
