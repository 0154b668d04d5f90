"""The daemon cannot wedge, and says what happened: a job's output is read while it runs, failures
are warnings with a reason (and a metric label), every option is checked alike, jobs get their own
thread counts, the start line and the status table say where jobs run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import log_events, run_cli
from convrepair.daemon import worker
from convrepair.daemon.executors.local import LocalExecutor
from convrepair.daemon.queue import JobQueue

# a job that logs 1 MB on each stream while it runs, then reports its thread settings as its result
CHATTY = ("-c", "import json, os, sys\n"
                "line = 'x' * 1023 + '\\n'\n"
                "for _ in range(1024):\n"
                "    sys.stdout.write(line); sys.stderr.write(line)\n"
                "sys.stdout.flush()\n"
                "print(json.dumps({'status': 'done', 'omp': os.environ.get('OMP_NUM_THREADS'),"
                " 'spec': json.load(sys.stdin)}))\n")


def _finish(proc, timeout: float) -> worker.WorkerResult:
    started = time.monotonic()
    while (result := worker.collect(proc, started, timeout)) is None:
        time.sleep(0.05)
    return result


def test_a_job_that_logs_a_megabyte_on_each_stream_completes_and_its_log_is_kept(tmp_path):
    log = tmp_path / "logs" / "job-1.log"
    proc = worker.start({"job_id": 1}, memory_mb=0, threads=3, log=log, command=CHATTY)
    result = _finish(proc, timeout=30)  # unread pipes stopped such a job at 64 KiB until its timeout killed it
    assert result.ok and result.seconds < 25, result
    assert result.result["spec"] == {"job_id": 1}
    assert log.stat().st_size >= 2 * 1024 * 1024


def test_local_jobs_share_the_cores_out_unless_the_operator_set_threads(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    executor = LocalExecutor(memory_mb=0, job_timeout=30, workers=2, log_dir=tmp_path / "logs")
    assert executor.threads == max(1, (os.cpu_count() or 1) // 2)
    proc = worker.start({}, 0, threads=executor.threads, command=CHATTY)
    assert _finish(proc, 30).result["omp"] == str(executor.threads)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the operator's own setting wins
    assert _finish(worker.start({}, 0, threads=executor.threads, command=CHATTY), 30).result["omp"] == "7"
    assert executor.describe()["executor"] == "local" and executor.describe()["node"]


def test_a_job_killed_by_a_signal_and_a_crash_carry_reasons():
    crash = worker.start({}, 0, command=("-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(5)"))
    result = _finish(crash, 30)
    assert not result.ok and result.reason == "crashed" and "boom" in result.error and not result.retry
    slow = worker.start({}, 0, command=("-c", "import time; time.sleep(60)"))
    result = _finish(slow, 0.5)
    assert not result.ok and result.reason == "timeout" and result.retry


def test_a_postponed_job_spends_no_attempt_and_waits_out_its_backoff(tmp_path):
    queue = JobQueue(tmp_path / "queue.sqlite")
    job_id = queue.enqueue("m", "1", "onnx", "aa")
    job = queue.claim(lease_seconds=30)
    assert job.attempts == 1
    delays = [queue.postpone(job_id, "server unreachable", 0.2, 0.5)]
    assert queue.claim(lease_seconds=30) is None and 0 < queue.next_due() <= 0.2
    time.sleep(0.25)
    assert queue.claim(lease_seconds=30).attempts == 1  # the outage did not count
    delays.append(queue.postpone(job_id, "again", 0.2, 0.5))  # the next delay doubles …
    time.sleep(0.45)
    queue.claim(lease_seconds=30)
    delays.append(queue.postpone(job_id, "and again", 0.2, 0.5))  # … up to the cap
    assert delays == [0.2, 0.4, 0.5]
    time.sleep(0.55)
    queue.claim(lease_seconds=30)
    assert queue.finish(job_id, True) == "done" and queue.get(job_id).waits == 0 and queue.get(job_id).attempts == 1
    queue.close()


@pytest.mark.parametrize("flag, value, says", [
    ("--http-port", "70000", "--http-port: must be from 1 to 65535"),
    ("--http-port", "0", "--http-port: must be from 1 to 65535"),
    ("--workers", "0", "--workers: must be from 1"),
    ("--job-timeout", "nan", "--job-timeout: must be a finite number"),
    ("--lease-seconds", "-1", "--lease-seconds: must be more than 0"),
    ("--quiet-seconds", "-0.5", "--quiet-seconds: must be at least 0"),
    ("--memory-mb", "-1", "--memory-mb: must be at least 0"),
    ("--backoff-seconds", "0", "--backoff-seconds: must be more than 0"),
    ("--parse-grace-seconds", "inf", "--parse-grace-seconds: must be a finite number"),
])
def test_every_daemon_option_out_of_range_is_one_line_and_exit_2_with_or_without_debug(tmp_path, flag, value, says):
    for debug in ((), ("--debug",)):
        result = run_cli(*debug, "daemon", tmp_path, "--state-dir", tmp_path / "state", "--once", flag, value)
        assert result.code == 2, (debug, result.stdout, result.stderr)
        assert says in result.stderr and result.stderr.strip().splitlines()[-1].startswith("convrepair: error:"), result.stderr
    assert not (tmp_path / "state").exists()  # refused before anything was opened


def test_allow_read_must_name_folders(tmp_path):
    result = run_cli("daemon", tmp_path, "--state-dir", tmp_path / "s", "--once", "--no-http", "--allow-read", tmp_path / "nope")
    assert result.code == 2 and "--allow-read" in result.stderr and "nope" in result.stderr, result.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_failed_jobs_are_warnings_with_a_reason_in_the_log_the_metric_and_the_status_table(fixtures_dir, tmp_path):
    registry = tmp_path / "registry"
    bad = registry / "badconfig"
    (bad / "1").mkdir(parents=True)
    (bad / "convrepair.toml").write_text('targets = ["onnx"]\nrepair = {policy = "sometimes"}\n')
    shutil.copy(fixtures_dir / "torch_cnn.pt2", bad / "1" / "model.pt2")
    corrupt = registry / "corrupt"
    (corrupt / "1").mkdir(parents=True)
    (corrupt / "convrepair.toml").write_text('targets = ["torch"]\nlenses = "none"\n')
    (corrupt / "1" / "model.onnx").write_bytes(b"\x08\x07" + os.urandom(500))
    state, log, port = tmp_path / "state", tmp_path / "daemon.log", _free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "convrepair", "daemon", str(registry), "--state-dir", str(state),
                                 "--log-format", "json", "--quiet-seconds", "0", "--parse-grace-seconds", "0",
                                 "--http-port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            failed = [e for e in log_events(log) if e.get("event") == "failed"]
            if len(failed) == 2:
                break
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.3)
        assert len(failed) == 2, log.read_text()[-3000:]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    by_model = {e["model"]: e for e in failed}
    assert {e["level"] for e in failed} == {"warning"}, failed
    assert by_model["badconfig"]["reason"] == "config-error" and "repair.policy" in by_model["badconfig"]["error"]
    assert by_model["corrupt"]["reason"] == "bad-input" and "model.onnx" in by_model["corrupt"]["error"]
    assert by_model["corrupt"]["log"] == str(state / "logs" / f"job-{by_model['corrupt']['job']}.log")
    assert Path(by_model["corrupt"]["log"]).is_file()
    assert 'convrepair_jobs_failed_total{model="badconfig",reason="config-error",retry="no",target="<config>"} 1.0' in metrics
    assert 'convrepair_jobs_failed_total{model="corrupt",reason="bad-input",retry="no",target="torch"} 1.0' in metrics
    starting = next(e for e in log_events(log) if e.get("event") == "starting")
    assert starting["executor"] == "local" and starting["node"] and starting["threads_per_job"] >= 1
    table = run_cli("status", "--state-dir", state)
    assert table.code == 0 and "executor" in table.stdout and "local" in table.stdout and starting["node"][:6] in table.stdout
    jobs = json.loads(run_cli("status", "--state-dir", state, "--json", "-").stdout)
    assert {j["executor"] for j in jobs if j["model"] == "corrupt"} == {"local"}
