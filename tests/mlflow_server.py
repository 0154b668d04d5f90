"""A real `mlflow server` for tests (SQLite backend store, local artifact root, 127.0.0.1, a free
port) and helpers that register fixture models the way a producer would."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
       "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(root: Path, start_timeout: float = 90.0, port: int | None = None) -> Iterator[str]:
    """Yield the tracking URI of a server that lives for the block; its whole process group goes after.
    The same `root` and `port` again: the same server back after an outage."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    uri = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, env={**os.environ, **ENV}, start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {proc.returncode}: {(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not up within {start_timeout:.0f} s: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)  # uvicorn and MLflow's job runner may take far longer to drain: not needed here
        except subprocess.TimeoutExpired:
            pass
        finally:  # the whole group, always: no worker outlives the session
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        log.close()


def client(uri: str):
    os.environ.update(ENV)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def register_model(mlflow_client, name: str, config: str | None, enabled: bool = True) -> None:
    tags = {"convrepair.enabled": "true"} if enabled else {}
    if config is not None:
        tags["convrepair.toml"] = config
    mlflow_client.create_registered_model(name, tags=tags)


def producer_experiment(mlflow_client) -> str:
    """The experiment a model's producer logs its runs in (not convrepair's own)."""
    experiment = mlflow_client.get_experiment_by_name("producer")
    return experiment.experiment_id if experiment else mlflow_client.create_experiment("producer")


def register_version(mlflow_client, name: str, files: dict[str, Path], tmp: Path, source_path: str = "model") -> str:
    """A producer's run with FILES as artifacts under `model/`, registered as a new version of NAME."""
    run = mlflow_client.create_run(producer_experiment(mlflow_client))
    staging = tmp / f"upload-{run.info.run_id}"
    staging.mkdir(parents=True)
    for target, source in files.items():
        shutil.copy2(source, staging / target)
    mlflow_client.log_artifacts(run.info.run_id, str(staging), artifact_path="model")
    mlflow_client.set_terminated(run.info.run_id)
    version = mlflow_client.create_model_version(name, f"runs:/{run.info.run_id}/{source_path}", run_id=run.info.run_id)
    return str(version.version)


def artifact_paths(mlflow_client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in mlflow_client.list_artifacts(run_id, path):
        out += artifact_paths(mlflow_client, run_id, item.path) if item.is_dir else [item.path]
    return out
