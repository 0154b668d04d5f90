"""The daemon on a real local Ray cluster (`ray start --head` on 127.0.0.1, two CPUs): every job
once, a Ray worker killed mid-job, the daemon killed mid-job — and always exactly one signed log."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import log_events, run_cli

try:
    import ray  # noqa: F401
except ImportError:
    if os.environ.get("CI", "").lower() == "true":
        raise  # CI must prove the Ray executor, not skip it
    pytest.skip("the Ray executor's extra is not installed (pip install 'convrepair[ray]')", allow_module_level=True)
pytestmark = pytest.mark.slow

DIGITS = 'targets = ["onnx"]\ndata = "data.npz"\nlenses = "none"\n[repair]\npolicy = "restore"\n'
RGB = 'targets = ["onnx-fp16"]\nlenses = "none"\n[repair]\npolicy = "none"\n'


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address():
    """A private Ray head node for this module; `--block` keeps its processes in one group we end.

    Token authentication on, with a token of its own in the environment the daemons inherit (a
    ~/.ray/auth_token left by some earlier `ray.init()` would otherwise switch it on halfway)."""
    import secrets

    env = pytest.MonkeyPatch()
    env.setenv("RAY_AUTH_MODE", "token")
    env.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    env.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    env.delenv("RAY_ADDRESS", raising=False)
    temp = Path(tempfile.mkdtemp(prefix="cr-ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    port = _free_port()
    log = temp / "head.log"
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={temp}",
         f"--ray-client-server-port={_free_port()}", f"--dashboard-port={_free_port()}", f"--memory={32 * 2**30}"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever of the group did not stop in time
        except ProcessLookupError:
            pass
        head.wait(timeout=10)
        shutil.rmtree(temp, ignore_errors=True)
        env.undo()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    assert run_cli("keys", "init", "--name", "service", "--dir", root, "--trust", root / "trust.json", "--role", "service").code == 0
    return root


def _digits_registry(root: Path, fixtures: Path) -> Path:
    model = root / "registry" / "digits"
    (model / ".tmp-1").mkdir(parents=True)
    (model / "convrepair.toml").write_text(DIGITS)
    shutil.copy(fixtures / "digits_test_nchw.npz", model / "data.npz")
    shutil.copy(fixtures / "torch_cnn.pt2", model / ".tmp-1" / "model.pt2")
    (model / ".tmp-1" / "_COMPLETE").touch()
    (model / ".tmp-1").rename(model / "1")
    return root / "registry"


def _daemon(registry: Path, state: Path, address: str, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "convrepair", "daemon", str(registry), "--state-dir", str(state), "--executor", "ray",
         "--ray-address", address, "--quiet-seconds", "0", "--no-http", "--log-format", "json", *extra],
        stdout=open(log, "a"), stderr=subprocess.STDOUT, text=True,
    )


def _wait_for(log: Path, proc: subprocess.Popen | None, done, what: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = done()
        if found:
            return found
        assert proc is None or proc.poll() is None, f"daemon exited ({proc.returncode}) waiting for {what}: {log.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout}s: {log.read_text()[-3000:]}")


def _job_under_ray_worker() -> tuple[int, int] | None:
    """(Ray worker pid, job process pid) of a job that runs inside a Ray task right now."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            parent_cmd = Path(f"/proc/{parent}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if "convrepair.daemon.job" in cmdline and parent_cmd.startswith("ray::"):
            return parent, int(entry.name)
    return None


def _jobs(state: Path) -> list[dict]:
    result = run_cli("status", "--state-dir", state, "--json", "-")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def _one_verified_log(registry: Path, keys: Path) -> None:
    logs = sorted(registry.rglob("*.log.dsse.json"))
    assert len(logs) == 1, logs
    assert not list(registry.rglob(".tmp-*")), list(registry.rglob(".tmp-*"))
    # the killed attempt's scratch on the node went with the next task there
    assert not list(Path(tempfile.gettempdir()).glob("convrepair-ray-*")), list(Path(tempfile.gettempdir()).glob("convrepair-ray-*"))
    verified = run_cli("verify", logs[0], "--trust", keys / "trust.json")
    assert verified.code == 0, verified.stdout + verified.stderr


def test_eight_versions_through_ray_each_processed_once(ray_address, tmp_path, keys):
    import synthetic

    model = tmp_path / "registry" / "rgb"
    model.mkdir(parents=True)
    (model / "convrepair.toml").write_text(RGB)
    for version in range(1, 9):  # two rounds of the four Ray workers
        tmp = model / f".tmp-{version}"
        tmp.mkdir()
        synthetic.build_rgb_model(tmp / "model.onnx", seed=version)
        (tmp / "_COMPLETE").touch()
        tmp.rename(model / str(version))
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    proc = _daemon(tmp_path / "registry", state, ray_address, log, "--once", "--workers", "4", "--sign-key", str(keys / "service.key"))
    try:
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    jobs = _jobs(state)
    assert len(jobs) == 8 and {j["state"] for j in jobs} == {"done"}, jobs
    assert {j["attempts"] for j in jobs} == {1}
    assert {j["executor"] for j in jobs} == {"ray"} and all(j["host"] and j["node"] for j in jobs)
    logs = sorted(model.rglob("repair.log.dsse.json"))
    assert len(logs) == 8 and len({p.parent.parent.parent for p in logs}) == 8  # one per version, none twice
    report = json.loads((model / "7" / "convrepair" / "onnx-fp16" / "repair.json").read_text())
    assert report["executor"]["kind"] == "ray"
    assert report["source"]["path"] == str(model / "7" / "model.onnx")  # the daemon's paths, not the worker's scratch
    assert report["target"]["path"].startswith(str(model / "7" / "convrepair" / "onnx-fp16") + "/")
    assert "convrepair-ray-" not in json.dumps(report)
    verified = run_cli("verify", logs[6], "--trust", keys / "trust.json")
    assert verified.code == 0, verified.stdout + verified.stderr


def test_ray_worker_killed_mid_job_is_requeued_after_its_lease_and_finishes_once(ray_address, fixtures_dir, tmp_path, keys):
    registry = _digits_registry(tmp_path, fixtures_dir)
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    proc = _daemon(registry, state, ray_address, log, "--lease-seconds", "4", "--sign-key", str(keys / "service.key"))
    try:
        ray_worker, job_process = _wait_for(log, proc, _job_under_ray_worker, "a job running in a Ray worker")
        os.kill(ray_worker, signal.SIGKILL)
        lost = _wait_for(log, proc, lambda: [e for e in log_events(log) if e.get("event") == "lost"], "the lost event")
        assert "WorkerCrashedError" in lost[0]["error"] or "died" in lost[0]["error"], lost
        _wait_for(log, proc, lambda: not Path(f"/proc/{job_process}").exists(), "the job process to die with its worker", 10)
        _wait_for(log, proc, lambda: [e for e in log_events(log) if e.get("event") == "requeued"], "the requeue after the lease")
        _wait_for(log, proc, lambda: [e for e in log_events(log) if e.get("event") == "done"], "the job to finish")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    jobs = _jobs(state)
    assert [(j["state"], j["attempts"], j["executor"]) for j in jobs] == [("done", 2, "ray")], jobs
    _one_verified_log(registry, keys)


def test_daemon_killed_mid_ray_job_then_restarted_gives_exactly_one_log(ray_address, fixtures_dir, tmp_path, keys):
    registry = _digits_registry(tmp_path, fixtures_dir)
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    proc = _daemon(registry, state, ray_address, log, "--lease-seconds", "4", "--sign-key", str(keys / "service.key"))
    try:
        _wait_for(log, proc, _job_under_ray_worker, "a job running in a Ray worker")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [j["state"] for j in _jobs(state)] == ["running"]  # left behind by the dead daemon
    _wait_for(log, None, lambda: _job_under_ray_worker() is None, "Ray to end the dead driver's task", 30)
    restarted = _daemon(registry, state, ray_address, log, "--once", "--lease-seconds", "4", "--sign-key", str(keys / "service.key"))
    try:
        assert restarted.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if restarted.poll() is None:
            restarted.kill()
    jobs = _jobs(state)
    assert [(j["state"], j["attempts"], j["executor"]) for j in jobs] == [("done", 2, "ray")], jobs
    _one_verified_log(registry, keys)


def test_unreachable_ray_cluster_is_a_clear_error(tmp_path):
    (tmp_path / "registry").mkdir()
    result = run_cli("daemon", tmp_path / "registry", "--state-dir", tmp_path / "state", "--once", "--no-http",
                     "--executor", "ray", "--ray-address", f"127.0.0.1:{_free_port()}", timeout=120)
    assert result.code == 2, result.stdout + result.stderr
    assert "cannot connect to the Ray cluster at 127.0.0.1:" in result.stderr


def test_mlflow_registry_through_ray_the_daemon_fetches_ships_signs_and_publishes(ray_address, fixtures_dir, tmp_path, keys):
    """MLflow and Ray together: the daemon fetches each version through MLflow, ships it through
    the object store, and lands, signs and publishes the results the task sends back."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            raise
        pytest.skip("mlflow is not installed (pip install 'convrepair[mlflow]')")
    from mlflow_server import ENV, client, mlflow_server, register_model, register_version

    with mlflow_server(tmp_path / "mlflow") as uri:
        mlflow = client(uri)
        register_model(mlflow, "digits", DIGITS.replace('policy = "restore"', 'policy = "none"'))
        files = {"model.pt2": fixtures_dir / "torch_cnn.pt2", "data.npz": fixtures_dir / "digits_test_nchw.npz"}
        version = register_version(mlflow, "digits", files, tmp_path)
        state, log = tmp_path / "state", tmp_path / "daemon.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "convrepair", "daemon", f"{uri}?poll_seconds=1", "--registry-kind", "mlflow", "--executor", "ray",
             "--ray-address", ray_address, "--state-dir", str(state), "--once", "--no-http", "--log-format", "json",
             "--sign-key", str(keys / "service.key")],
            stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**os.environ, **ENV})
        try:
            assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
        jobs = _jobs(state)
        assert [(j["model"], j["state"], j["attempts"], j["executor"]) for j in jobs] == [("digits", "done", 1, "ray")], jobs
        assert jobs[0]["node"] and jobs[0]["result"]["results"].startswith("runs:/")
        tags = mlflow.get_model_version("digits", version).tags
        assert tags["convrepair.onnx.verdict"] and tags["convrepair.onnx.log_sha256"] != "unsigned"
        verified = subprocess.run([sys.executable, "-m", "convrepair", "verify", f"models:/digits/{version}", "--trust",
                                   str(keys / "trust.json")], capture_output=True, text=True, timeout=120,
                                  env={**os.environ, **ENV, "MLFLOW_TRACKING_URI": uri})
        assert verified.returncode == 0, verified.stdout + verified.stderr
    assert not list((state / "downloads").rglob("*.log.dsse.json"))  # published, nothing left behind
