"""The daemon holds: one daemon per state dir, a paused copy is one clean job, results name their
final paths, idle means idle, health and logs say what is true. Real daemons as subprocesses."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import log_events, run_cli

CONFIG = 'targets = ["onnx"]\ndata = "data.npz"\nlenses = "none"\n[repair]\npolicy = "restore"\n'


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(registry: Path, state: Path, log: Path, *extra: str) -> subprocess.Popen:
    """A real daemon whose JSON log goes to a file (nobody has to drain a pipe)."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "convrepair", "daemon", str(registry), "--state-dir", str(state),
                                 "--log-format", "json", *extra], stdout=out, stderr=subprocess.STDOUT, text=True)


def _wait_event(proc: subprocess.Popen, log: Path, name: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in log_events(log) if e.get("event") == name]
        if found:
            return found[-1]
        assert proc.poll() is None, f"daemon exited {proc.returncode}: {log.read_text()[-2000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no {name!r} event within {timeout} s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _jobs(state: Path) -> list[dict]:
    result = run_cli("status", "--state-dir", state, "--json", "-")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of the process itself (not its children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    assert run_cli("keys", "init", "--name", "service", "--dir", root, "--trust", root / "trust.json", "--role", "service").code == 0
    return root


@pytest.mark.slow
def test_one_daemon_per_state_dir_and_a_paused_copy_is_one_clean_job_under_final_paths(fixtures_dir, tmp_path, keys):
    registry = tmp_path / "registry"
    (registry / "digits").mkdir(parents=True)
    (registry / "digits" / "convrepair.toml").write_text(CONFIG)
    shutil.copy(fixtures_dir / "digits_test_nchw.npz", registry / "digits" / "data.npz")
    state, log, port = tmp_path / "state", tmp_path / "daemon.log", _free_port()
    first = _start(registry, state, log, "--quiet-seconds", "1", "--http-port", str(port), "--sign-key", str(keys / "service.key"))
    try:
        _wait_event(first, log, "starting", timeout=60)
        version = registry / "digits" / "1"
        version.mkdir()
        data = (fixtures_dir / "torch_cnn.pt2").read_bytes()
        with open(version / "model.pt2", "wb") as handle:  # a copy that stalls mid-file for 4.5 quiet periods
            handle.write(data[: len(data) // 2])
            handle.flush()
            time.sleep(4.5)
            handle.write(data[len(data) // 2 :])
        _wait_event(first, log, "started")
        assert [e for e in log_events(log) if e.get("event") == "waiting"], "the half-written model was not waited for"

        second = run_cli("daemon", registry, "--state-dir", state, "--no-http", timeout=30)  # mid-job, same state dir
        assert second.code == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert f"pid {first.pid}" in second.stderr and "daemon.lock" in second.stderr
        clash = run_cli("daemon", registry, "--state-dir", tmp_path / "other", "--http-port", port, "--once", timeout=30)
        assert clash.code == 2 and len(clash.stderr.strip().splitlines()) == 1 and f"port {port}" in clash.stderr, clash.stderr

        _wait_event(first, log, "done", timeout=300)
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
        assert health["status"] == "ok" and health["watcher"] == "inotify", health
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'convrepair_job_duration_seconds_count{model="digits",outcome="done",target="onnx"} 1.0' in metrics
        assert 'convrepair_label_agreement_ratio{model="digits",target="onnx"}' in metrics
        assert "# TYPE convrepair_jobs_failed_total counter" in metrics and 'convrepair_build_info{version="' in metrics
    finally:
        _stop(first)
    assert first.returncode == 0, log.read_text()[-2000:]
    jobs = _jobs(state)
    assert [(j["state"], j["attempts"]) for j in jobs] == [("done", 1)], jobs  # one job, never run twice
    results = version / "convrepair"
    assert sorted(p.name for p in results.iterdir()) == ["onnx"]  # no scratch folder of any attempt

    signed = results / "onnx" / "repair.log.dsse.json"
    payload = base64.b64decode(json.loads(signed.read_text())["payload"]).decode()
    assert ".tmp" not in payload  # the log names where the files are, not where the job made them
    repair = json.loads(payload)["predicate"]["repair"]
    assert Path(repair["target"]["path"]).parent == results / "onnx" / "converted"
    assert run_cli("verify", signed, "--trust", keys / "trust.json").code == 0
    listed = run_cli("review", "--registry", registry, "--status", "all", "--trust", keys / "trust.json", "--json", "-")
    assert listed.code == 0, listed.stderr
    assert [row["target"] for row in json.loads(listed.stdout)] == [repair["target"]["path"]]
    # the daemon's artifact, approved and promoted, verifies where it was promoted to
    assert run_cli("keys", "init", "--name", "reviewer", "--dir", tmp_path / "keys", "--trust", keys / "trust.json",
                   "--role", "reviewer").code == 0
    promoted = run_cli("approve", signed, "--key", tmp_path / "keys" / "reviewer.key", "--trust", keys / "trust.json",
                       "--promote", tmp_path / "serving")
    assert promoted.code == 0, promoted.stdout + promoted.stderr
    promoted_logs = list((tmp_path / "serving").rglob("repair.log.dsse.json"))
    assert len(promoted_logs) == 1
    check = run_cli("verify", promoted_logs[0], "--trust", keys / "trust.json", "--require-approval")
    assert check.code == 0, check.stdout + check.stderr


@pytest.mark.slow
def test_an_idle_daemon_is_idle_with_inotify_and_with_poll(fixtures_dir, tmp_path):
    registry = tmp_path / "registry"
    done = registry / "digits" / "1"
    (done / "convrepair" / "onnx").mkdir(parents=True)  # a finished result: nothing to do for it
    (registry / "digits" / "convrepair.toml").write_text(CONFIG)
    shutil.copy(fixtures_dir / "digits_test_nchw.npz", registry / "digits" / "data.npz")
    shutil.copy(fixtures_dir / "torch_cnn.pt2", done / "model.pt2")
    broken = registry / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "convrepair.toml").write_text('targets = ["coreml"]\n')  # its config fails a job in the daemon itself
    shutil.copy(fixtures_dir / "torch_cnn.pt2", broken / "1" / "model.pt2")
    daemons = {mode: _start(registry, tmp_path / f"state-{mode}", tmp_path / f"{mode}.log", "--no-http", "--quiet-seconds", "1",
                            *(["--poll"] if mode == "poll" else []))
               for mode in ("inotify", "poll")}
    try:
        for mode, proc in daemons.items():
            _wait_event(proc, tmp_path / f"{mode}.log", "failed", timeout=60)  # the broken config, found by the first scans
        before = {mode: _cpu_seconds(proc.pid) for mode, proc in daemons.items()}
        time.sleep(20)
        used = {mode: _cpu_seconds(proc.pid) - before[mode] for mode, proc in daemons.items()}
        assert all(seconds < 0.2 for seconds in used.values()), f"CPU seconds in 20 s idle: {used}"  # < 1% of a core

        (broken / "2").mkdir()  # a change still wakes both at once, and job ids did not run on while idle
        shutil.copy(fixtures_dir / "torch_cnn.pt2", broken / "2" / "model.pt2")
        for mode, proc in daemons.items():
            deadline = time.monotonic() + 30
            while len([e for e in log_events(tmp_path / f"{mode}.log") if e.get("event") == "failed"]) < 2:
                assert time.monotonic() < deadline, f"{mode}: the new version was not seen"
                time.sleep(0.2)
    finally:
        for proc in daemons.values():
            _stop(proc)
    for mode in daemons:
        assert [j["id"] for j in _jobs(tmp_path / f"state-{mode}")] == [1, 2]


def test_queue_requeues_only_expired_leases_and_spends_no_ids_on_known_content(tmp_path):
    from convrepair.daemon.queue import JobQueue

    queue = JobQueue(tmp_path / "queue.sqlite")
    live, expired, mine = (queue.enqueue("m", str(v), "onnx", f"sha{v}") for v in (1, 2, 3))
    for _ in range(50):
        assert queue.enqueue("m", "1", "onnx", "sha1") is None
    assert queue.enqueue("m", "4", "onnx", "sha4") == 4
    queue.claim(lease_seconds=60)
    queue.claim(lease_seconds=-1)
    queue.claim(lease_seconds=-1)
    assert queue.requeue_orphans(keep={mine}) == [expired]
    assert {j.id: j.state for j in queue.jobs()} == {live: "running", expired: "queued", mine: "running", 4: "queued"}
    assert queue.finish(live, False, "Cannot parse", retry=False) == "failed"
    assert queue.finish(mine, False, "timed out", retry=True) == "queued"
    queue.close()


def test_worker_results_say_which_failures_may_go_differently(tmp_path):
    from convrepair.daemon import worker

    code = "import sys, json; print(json.dumps({'status': 'failed', 'error': 'x.onnx: does not parse', 'retry': False})); sys.exit(3)"
    parse = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parse.wait()
    failed = worker.collect(parse, time.monotonic(), 60)
    assert not failed.ok and failed.retry is False and "does not parse" in failed.error
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    killed.kill()
    killed.wait()
    lost = worker.collect(killed, time.monotonic(), 60)
    assert not lost.ok and lost.retry is True and "signal 9" in lost.error


def test_healthz_is_503_when_the_watcher_stops(tmp_path):
    import threading

    from convrepair.daemon.service import Daemon, DaemonConfig

    (tmp_path / "registry").mkdir()
    port = _free_port()
    config = DaemonConfig(registry=tmp_path / "registry", state_dir=tmp_path / "state", http_port=port, quiet_seconds=1)
    made: list[Daemon] = []

    def serve() -> None:  # the queue's SQLite connection lives in the daemon's own thread
        made.append(Daemon(config))
        made[0].run()

    runner = threading.Thread(target=serve, daemon=True)
    runner.start()
    url = f"http://127.0.0.1:{port}/healthz"
    deadline = time.monotonic() + 30
    while not made or made[0].observer is None:
        assert time.monotonic() < deadline and runner.is_alive()
        time.sleep(0.05)
    daemon = made[0]
    try:
        assert json.loads(urllib.request.urlopen(url, timeout=5).read())["status"] == "ok"
        daemon.observer.stop()
        daemon.observer.join()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert refused.value.code == 503
        body = json.loads(refused.value.read())
        assert body["status"] == "unhealthy" and "the inotify watcher has stopped" in body["problems"]
    finally:
        daemon.stop()
        runner.join(timeout=30)
    assert not runner.is_alive()


def test_logs_are_plain_text_or_json_and_once_on_an_empty_registry_says_so(tmp_path):
    from convrepair.daemon import logs

    for fmt in ("text", "json"):
        stream = io.StringIO()
        logs.configure(fmt, stream)
        logs.event("failed", job=3, model="digits", error="model.onnx: does not parse")
        line = stream.getvalue().strip()
        if fmt == "json":
            assert json.loads(line)["event"] == "failed" and json.loads(line)["job"] == 3
        else:
            assert "{" not in line and line.endswith('info failed job=3 model=digits error="model.onnx: does not parse"'), line
    logging.getLogger().handlers.clear()
    (tmp_path / "registry").mkdir()
    result = run_cli("daemon", tmp_path / "registry", "--state-dir", tmp_path / "state", "--once", "--no-http", timeout=120)
    assert result.code == 0
    assert "starting convrepair=" in result.stderr and f"registry={tmp_path / 'registry'}" in result.stderr
    assert "state_dir=" in result.stderr and "no models here" in result.stderr, result.stderr


def test_readiness_tells_a_cut_model_from_a_whole_one(fixtures_dir, tmp_path):
    import synthetic

    from convrepair.daemon.readiness import incomplete_reason
    from convrepair.plugins import default_registry

    detect = default_registry().detect_format
    synthetic.build_rgb_model(tmp_path / "model.onnx", seed=1)
    shutil.copytree(fixtures_dir / "keras_cnn.savedmodel", tmp_path / "model.savedmodel")
    for whole in (fixtures_dir / "torch_cnn.pt2", fixtures_dir / "keras_cnn.keras", tmp_path / "model.onnx", tmp_path / "model.savedmodel"):
        assert incomplete_reason(whole, detect) is None, whole
        cut = whole.parent / "model.savedmodel" / "saved_model.pb" if whole.is_dir() else tmp_path / f"cut{whole.suffix}"
        data = (whole / "saved_model.pb" if whole.is_dir() else whole).read_bytes()
        cut.write_bytes(data[: len(data) * 3 // 4])
        assert incomplete_reason(whole if whole.is_dir() else cut, detect) is not None, whole
