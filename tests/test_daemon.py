"""The real daemon as a subprocess on a temporary registry: jobs, crashes, signals, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow
CONFIG = 'targets = ["onnx"]\ndata = "data.npz"\n[repair]\npolicy = "restore"\n'


def _registry(root: Path, fixtures: Path) -> Path:
    registry = root / "registry"
    model = registry / "digits"
    model.mkdir(parents=True)
    (model / "convrepair.toml").write_text(CONFIG)
    shutil.copy(fixtures / "digits_test_nchw.npz", model / "data.npz")
    return registry


def _drop_atomically(model_dir: Path, version: str, fixtures: Path, name="torch_cnn.pt2") -> Path:
    """Producer protocol: write into .tmp-<id>/, add _COMPLETE, rename to the version number."""
    tmp = model_dir / f".tmp-{version}"
    tmp.mkdir()
    shutil.copy(fixtures / name, tmp / "model.pt2")
    (tmp / "_COMPLETE").touch()
    tmp.rename(model_dir / version)
    return model_dir / version


def _daemon(registry: Path, state: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "convrepair", "daemon", str(registry), "--state-dir", str(state), "--quiet-seconds", "1",
         "--log-format", "json", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_for(proc: subprocess.Popen, event: str, timeout: float = 120) -> list[dict]:
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        try:
            record = json.loads(line)
        except ValueError:
            continue
        seen.append(record)
        if record.get("event") == event:
            return seen
    raise AssertionError(f"no {event!r} event within {timeout}s; saw {seen}")


def _jobs(state: Path) -> list[dict]:
    result = run_cli("status", "--state-dir", state, "--json")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    assert run_cli("keys", "init", "--name", "service", "--dir", root, "--trust", root / "trust.json", "--role", "service").code == 0
    return root


def test_once_runs_good_jobs_fails_bad_ones_and_never_repeats(fixtures_dir, tmp_path, keys):
    registry = _registry(tmp_path, fixtures_dir)
    _drop_atomically(registry / "digits", "1", fixtures_dir)
    bad = registry / "badconfig"
    (bad / "1").mkdir(parents=True)
    (bad / "convrepair.toml").write_text('targets = ["onnx", "coreml"]\nlenses = ["calibration", "vibes"]\nrepair = {policy = "sometimes"}\n')
    shutil.copy(fixtures_dir / "torch_cnn.pt2", bad / "1" / "model.pt2")
    corrupt = registry / "corrupt"
    (corrupt / "1").mkdir(parents=True)
    (corrupt / "convrepair.toml").write_text('targets = ["torch"]\n')
    (corrupt / "1" / "model.onnx").write_bytes(b"\x08\x07" + os.urandom(500))
    (registry / "digits" / "not-a-version").mkdir()  # ignored, as Triton ignores it
    state = tmp_path / "state"
    result = run_cli("daemon", registry, "--state-dir", state, "--once", "--quiet-seconds", "0", "--no-http",
                     "--sign-key", keys / "service.key", timeout=600)
    assert result.code == 0, result.stdout + result.stderr
    jobs = {(j["model"], j["target"]): j for j in _jobs(state)}
    assert jobs[("digits", "onnx")]["state"] == "done"
    assert jobs[("badconfig", "<config>")]["state"] == "failed"
    error = jobs[("badconfig", "<config>")]["error"]
    assert "badconfig/convrepair.toml" in error and "coreml" in error and "repair.policy" in error and "lenses: unknown lens vibes" in error
    assert jobs[("corrupt", "torch")]["state"] == "failed" and "model.onnx" in jobs[("corrupt", "torch")]["error"]
    assert jobs[("corrupt", "torch")]["attempts"] == 1  # a model that does not parse is not tried again
    assert not list((corrupt / "1").glob("convrepair/.tmp*"))  # a failed job leaves no scratch
    results = registry / "digits" / "1" / "convrepair" / "onnx"
    log = results / "repair.log.dsse.json"
    assert log.exists() and not list((registry / "digits" / "1" / "convrepair").glob(".tmp-*"))
    verified = run_cli("verify", log, "--trust", keys / "trust.json")
    assert verified.code == 0, verified.stdout
    lenses = json.loads((results / "repair.json").read_text())["lenses"]  # on by default in the daemon
    assert lenses["roles"][:2] == ["source", "target"]
    assert not [name for name in ("calibration", "uncertainty", "robustness", "occlusion") if "unavailable" in lenses[name]], lenses
    # the same content again: nothing new is queued or run
    again = run_cli("daemon", registry, "--state-dir", state, "--once", "--quiet-seconds", "0", "--no-http", timeout=300)
    assert again.code == 0 and len(_jobs(state)) == len(jobs)
    # a changed model file is a new job
    version_two = _drop_atomically(registry / "digits", "2", fixtures_dir, "torch_cnn_v2.pt2")
    assert version_two.exists()


def test_kill_9_mid_job_then_restart_gives_exactly_one_log(fixtures_dir, tmp_path, keys):
    registry = _registry(tmp_path, fixtures_dir)
    _drop_atomically(registry / "digits", "1", fixtures_dir)
    state = tmp_path / "state"
    proc = _daemon(registry, state, "--no-http", "--sign-key", str(keys / "service.key"), "--lease-seconds", "3")
    try:
        _wait_for(proc, "started")
        time.sleep(1.5)  # the worker is converting now
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [j["state"] for j in _jobs(state)] == ["running"]  # left behind by the dead daemon
    result = run_cli("daemon", registry, "--state-dir", state, "--once", "--quiet-seconds", "0", "--no-http",
                     "--sign-key", keys / "service.key", timeout=600)
    assert result.code == 0, result.stdout + result.stderr
    jobs = _jobs(state)
    assert [j["state"] for j in jobs] == ["done"], jobs
    assert jobs[0]["attempts"] == 2  # the killed attempt and the one that finished
    results = registry / "digits" / "1" / "convrepair"
    assert len(list(results.rglob("*.log.dsse.json"))) == 1
    assert not list(results.glob(".tmp-*"))


def test_slow_copy_waits_for_the_quiet_period_and_sigterm_exits_cleanly(fixtures_dir, tmp_path):
    registry = _registry(tmp_path, fixtures_dir)
    state = tmp_path / "state"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = _daemon(registry, state, "--http-port", str(port))
    try:
        time.sleep(2)
        version = registry / "digits" / "1"
        version.mkdir()
        data = (fixtures_dir / "torch_cnn.pt2").read_bytes()
        with open(version / "model.pt2", "wb") as handle:  # written in pieces over ~3 s
            for i in range(0, len(data), len(data) // 6 + 1):
                handle.write(data[i : i + len(data) // 6 + 1])
                handle.flush()
                time.sleep(0.5)
        last_write = time.time()
        seen = _wait_for(proc, "started")
        queued = [r for r in seen if r.get("event") == "queued"]
        assert queued and all(j["created"] >= last_write for j in _jobs(state)), "picked up before the copy finished"
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
        assert health["status"] == "ok" and health["problems"] == [] and health["watcher"] == "inotify"
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "convrepair_jobs" in metrics and 'convrepair_build_info{version="' in metrics
        proc.send_signal(signal.SIGTERM)  # during the job: it finishes within the grace period
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [j["state"] for j in _jobs(state)] == ["done"]


def test_eight_versions_at_once_are_all_processed_once_with_bounded_memory(tmp_path, keys):
    import synthetic

    registry = tmp_path / "registry"
    model = registry / "rgb"
    model.mkdir(parents=True)
    (model / "convrepair.toml").write_text('targets = ["onnx-fp16"]\nlenses = "none"\n[repair]\npolicy = "none"\n')
    for version in range(1, 9):  # eight distinct models land together: four for each of the two workers
        tmp = model / f".tmp-{version}"
        tmp.mkdir()
        synthetic.build_rgb_model(tmp / "model.onnx", seed=version)
        (tmp / "_COMPLETE").touch()
        tmp.rename(model / str(version))
    state = tmp_path / "state"
    output = open(tmp_path / "daemon.log", "w")  # a file, not a pipe nobody reads while it runs
    proc = subprocess.Popen(
        [sys.executable, "-m", "convrepair", "daemon", str(registry), "--state-dir", str(state), "--once", "--workers", "2",
         "--quiet-seconds", "0", "--no-http", "--sign-key", str(keys / "service.key")],
        stdout=output, stderr=subprocess.STDOUT, text=True,
    )
    peak_mb = 0.0  # sampled from /proc: ru_maxrss would count the forking test process's pages
    while proc.poll() is None:
        try:
            status_lines = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            rss = next(int(line.split()[1]) for line in status_lines if line.startswith("VmRSS:"))
            peak_mb = max(peak_mb, rss / 1024)
        except (OSError, StopIteration, ValueError):
            pass
        time.sleep(0.2)
    output.close()
    assert proc.returncode == 0, (tmp_path / "daemon.log").read_text()[-2000:]
    jobs = _jobs(state)
    assert len(jobs) == 8 and {j["state"] for j in jobs} == {"done"}
    assert len({(j["model"], j["version"]) for j in jobs}) == 8
    logs = sorted(registry.rglob("repair.log.dsse.json"))
    assert len(logs) == 8  # one per job, none twice
    assert 0 < peak_mb < 1024, f"daemon peak RSS {peak_mb:.0f} MB"  # jobs run in their own processes


def test_unknown_registry_kind_is_a_clear_error(tmp_path):
    result = run_cli("daemon", tmp_path, "--registry-kind", "nexus", "--once", "--no-http", "--state-dir", tmp_path / "s")
    assert result.code == 2 and "unknown registry kind 'nexus'" in result.stderr and "directory" in result.stderr
