"""The daemon against a real MLflow tracking server: every new version is processed once, written
back as run artifacts and version tags; approval promotes and moves the alias; crashes and an
unreachable server never make a second log or take the daemon down."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    import mlflow  # noqa: F401
except ImportError:
    if os.environ.get("CI", "").lower() == "true":
        raise  # CI must prove the MLflow registry, not skip it
    pytest.skip("mlflow is not installed (pip install 'convrepair[mlflow]')", allow_module_level=True)

from conftest import run_cli  # noqa: E402
from mlflow_server import (  # noqa: E402
    ENV, artifact_paths, client, free_port, mlflow_server, producer_experiment, register_model, register_version)

from convrepair.fsutil import sha256_file  # noqa: E402

pytestmark = pytest.mark.slow
CONFIG = 'targets = ["onnx"]\ndata = "data.npz"\nlenses = "none"\n[repair]\npolicy = "none"\n'


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    for name, role in (("service", "service"), ("alice", "reviewer")):
        result = run_cli("keys", "init", "--name", name, "--dir", root, "--trust", root / "trust.json", "--role", role)
        assert result.code == 0, result.stderr
    return root


def _cli(uri: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convrepair", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **ENV, "MLFLOW_TRACKING_URI": uri, "COLUMNS": "200"})


def _daemon_once(uri: str, state: Path, keys: Path) -> subprocess.CompletedProcess:
    return _cli(uri, "daemon", f"{uri}?poll_seconds=1", "--registry-kind", "mlflow", "--state-dir", state, "--once",
                "--no-http", "--sign-key", keys / "service.key", "--log-format", "json")


def _jobs(state: Path) -> list[dict]:
    result = run_cli("status", "--state-dir", state, "--json", "-")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def _files(fixtures: Path, model: str = "torch_cnn.pt2") -> dict[str, Path]:
    return {"model.pt2": fixtures / model, "data.npz": fixtures / "digits_test_nchw.npz"}


@pytest.fixture(scope="module")
def processed(server, fixtures_dir, keys, tmp_path_factory):
    """Two versions of `digits`, one `broken` version (its artifacts are missing), one model not
    enabled; then one `daemon --once`."""
    tmp = tmp_path_factory.mktemp("producer")
    mlflow = client(server)
    register_model(mlflow, "digits", CONFIG)
    versions = [register_version(mlflow, "digits", _files(fixtures_dir, name), tmp) for name in ("torch_cnn.pt2", "torch_cnn_v2.pt2")]
    register_model(mlflow, "broken", CONFIG)
    register_version(mlflow, "broken", _files(fixtures_dir), tmp, source_path="not-uploaded")
    register_model(mlflow, "ignored", CONFIG, enabled=False)
    register_version(mlflow, "ignored", _files(fixtures_dir), tmp)
    state = tmp / "state"
    result = _daemon_once(server, state, keys)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    broken = {(j["model"], j["state"]) for j in _jobs(state)}
    assert ("broken", "failed") in broken
    mlflow.delete_registered_model_tag("broken", "convrepair.enabled")  # later daemons need not fail it again
    return {"uri": server, "client": mlflow, "versions": versions, "state": state, "tmp": tmp, "broken": broken}


def test_plugins_lists_the_mlflow_registry():
    result = run_cli("plugins", "--quick", "--json", "-")  # the mlflow row does not need frameworks imported
    assert result.code == 0, result.stderr
    record = next(p for p in json.loads(result.stdout) if p["plugin"] == "mlflow")
    assert record["registries"] == ["mlflow"] and record["status"] == "available"


def test_every_new_version_gets_tags_artifacts_and_a_signed_log(processed, keys):
    mlflow, uri = processed["client"], processed["uri"]
    jobs = {(j["model"], j["version"]): j for j in _jobs(processed["state"])}
    assert not [key for key in jobs if key[0] == "ignored"]  # not tagged convrepair.enabled
    for version in processed["versions"]:
        assert jobs[("digits", version)]["state"] == "done", jobs
        tags = mlflow.get_model_version("digits", version).tags
        assert tags["convrepair.status"] == "pending-review"
        assert tags["convrepair.verdict"] and float(tags["convrepair.label_agreement"]) > 0.9
        run_id = tags["convrepair.run_id"]
        files = artifact_paths(mlflow, run_id)
        assert {"onnx/repair.log.dsse.json", "onnx/repair.json", "onnx/converted/model.onnx"} <= set(files), files
        assert any(f.startswith("onnx/repaired/") for f in files)
        log = Path(mlflow.download_artifacts(run_id, "onnx/repair.log.dsse.json", str(processed["tmp"])))
        assert sha256_file(log) == tags["convrepair.log_sha256"]
        verified = _cli(uri, "verify", f"models:/digits/{version}", "--trust", keys / "trust.json", "--json", "-")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        checks = {c["check"]: c for c in json.loads(verified.stdout)["checks"]}
        assert checks["file ../../model.pt2"]["detail"] == "digest matches"  # the registered source is what was converted
    broken = jobs[("broken", "1")]
    assert broken["state"] == "failed" and "\n" not in broken["error"]
    assert "models:/broken/1" in broken["error"] and "not found" in broken["error"], broken["error"]


def test_approval_promotes_after_verify_and_moves_the_alias(processed, keys):
    mlflow, uri = processed["client"], processed["uri"]
    promoted = []
    for version in processed["versions"]:
        result = _cli(uri, "approve", f"models:/digits/{version}", "--key", keys / "alice.key", "--comment", "checked",
                      "--promote", "@approved", "--trust", keys / "trust.json", "--json", "-")
        assert result.returncode == 0, result.stdout + result.stderr
        out = json.loads(result.stdout)
        promoted.append(out["promoted"]["version"])
        assert mlflow.get_model_version_by_alias("digits", "approved").version == promoted[-1]
        tags = mlflow.get_model_version("digits", version).tags
        assert tags["convrepair.status"] == "approved" and tags["convrepair.onnx.promoted_version"] == promoted[-1]
        assert mlflow.get_model_version("digits", promoted[-1]).tags["convrepair.promoted_from"] == version
        verified = _cli(uri, "verify", "models:/digits@approved", "--trust", keys / "trust.json", "--require-approval")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    assert promoted[0] != promoted[1]
    again = _cli(uri, "approve", f"models:/digits/{processed['versions'][0]}", "--key", keys / "alice.key",
                 "--promote", "@approved", "--trust", keys / "trust.json")
    assert again.returncode == 2 and "one decision" in again.stderr, again.stdout + again.stderr


def test_a_second_poll_does_not_redo_a_finished_version(processed, keys):
    before = _jobs(processed["state"])
    again = _daemon_once(processed["uri"], processed["state"], keys)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _jobs(processed["state"]) == before
    fresh = processed["tmp"] / "fresh-state"  # the registry's own tags, not our queue, say what is finished
    result = _daemon_once(processed["uri"], fresh, keys)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {j["model"] for j in _jobs(fresh)} <= {"broken"}  # promoted copies and finished versions: no jobs


def test_kill_9_mid_job_still_gives_exactly_one_signed_log(server, fixtures_dir, keys, tmp_path):
    """Also: the config as an artifact (tag convrepair.toml_artifact), the data as an artifact URI."""
    mlflow = client(server)
    shared = mlflow.create_run(producer_experiment(mlflow)).info.run_id
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy2(fixtures_dir / "digits_test_nchw.npz", inputs / "digits.npz")
    (inputs / "convrepair.toml").write_text(CONFIG.replace('"data.npz"', f'"runs:/{shared}/inputs/digits.npz"'))
    mlflow.log_artifacts(shared, str(inputs), artifact_path="inputs")
    mlflow.create_registered_model("crashy", tags={"convrepair.enabled": "true",
                                                   "convrepair.toml_artifact": f"runs:/{shared}/inputs/convrepair.toml"})
    register_version(mlflow, "crashy", {"model.pt2": fixtures_dir / "torch_cnn.pt2"}, tmp_path)
    state = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-m", "convrepair", "daemon", f"{server}?poll_seconds=1", "--registry-kind", "mlflow",
                             "--state-dir", str(state), "--no-http", "--sign-key", str(keys / "service.key"), "--log-format", "json",
                             "--lease-seconds", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **ENV})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if '"started"' in line and '"crashy"' in line or not line:
                break
        assert '"started"' in line, "the job never started"
        time.sleep(1.5)  # the worker is downloading or converting now
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    result = _daemon_once(server, state, keys)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = [j for j in _jobs(state) if j["model"] == "crashy"]
    assert [j["state"] for j in jobs] == ["done"] and jobs[0]["attempts"] == 2, jobs
    experiment = mlflow.get_experiment_by_name("convrepair").experiment_id
    runs = mlflow.search_runs([experiment], "tags.`convrepair.model` = 'crashy'")
    assert len(runs) == 1
    logs = [p for p in artifact_paths(mlflow, runs[0].info.run_id) if p.endswith(".log.dsse.json")]
    assert logs == ["onnx/repair.log.dsse.json"]
    assert not list((state / "downloads").rglob("*.log.dsse.json"))  # nothing left behind locally
    rejected = _cli(server, "reject", "models:/crashy/1", "--key", keys / "alice.key", "--reason", "no", "--trust", keys / "trust.json")
    assert rejected.returncode == 0, rejected.stdout + rejected.stderr
    assert mlflow.get_model_version("crashy", "1").tags["convrepair.status"] == "rejected"


def test_unreachable_server_fails_the_job_in_one_line_and_the_daemon_stays_up(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"job_id": 1, "remote": True, "registry_kind": "mlflow", "registry": f"{dead}?retries=1",
                                "model": "digits", "version": "1", "target": "onnx", "downloads": str(tmp_path / "dl"),
                                "version_dir": "", "model_file": "", "sign_key": None}))
    job = subprocess.run([sys.executable, "-m", "convrepair.daemon.job", str(spec)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **ENV})
    assert job.returncode == 3, job.stdout + job.stderr
    outcome = json.loads(job.stdout.strip().splitlines()[-1])
    assert "server unreachable" in outcome["error"] and dead in outcome["error"] and outcome["retry"] is True
    proc = subprocess.Popen([sys.executable, "-m", "convrepair", "daemon", f"{dead}?poll_seconds=0.5", "--registry-kind", "mlflow",
                             "--state-dir", str(tmp_path / "state"), "--no-http", "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **ENV})
    try:
        deadline, seen = time.monotonic() + 60, ""
        while time.monotonic() < deadline and "registry-unreachable" not in seen:
            seen += proc.stdout.readline()
        assert "registry-unreachable" in seen, seen
        time.sleep(1)
        assert proc.poll() is None  # still up, polling with backoff
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
