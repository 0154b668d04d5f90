"""Jobs through the `local` and `ray` executors on this machine: jobs/s and per-job overhead.

    python bench/executor_bench.py --fixtures fixtures/out [-n 8] [--real 4] [--workers 2] [--ray-address HOST:PORT]

Starts a private Ray head node (`ray start --head --block`, 127.0.0.1, as many CPUs as the
machine) unless --ray-address names one. Every job goes through the executor API the daemon uses
(`submit` up to --workers at a time, `poll` until done), so what is measured is the executor:
  no-op job   a version whose convrepair.toml names an unknown target: the job process starts,
              imports the engine, reads the config and fails — dispatch, transfer, process start
              and imports, i.e. what every job pays before it does any work
  real job    the digits CNN fixture (.pt2) → ONNX, checked and repaired (policy restore), signed
Also: the SQLite queue alone (enqueue → claim → finish per job), signing one repair log, and
moving a model's bytes through Ray's object store (ray.put, a task reads them, bytes come back).
"""

from __future__ import annotations

import argparse
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

DIGITS = 'targets = ["onnx"]\ndata = "data.npz"\nlenses = "none"\n[repair]\npolicy = "restore"\n'
NOOP = 'targets = ["no-such-target"]\n'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ray(temp: Path) -> tuple[subprocess.Popen, str]:
    """A private head node with token authentication (a token of its own, in this process's environment)."""
    import secrets

    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    port = free_port()
    log = temp / "ray-head.log"
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}", f"--num-cpus={os.cpu_count()}",
         "--include-dashboard=false", "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={temp / 'ray'}",
         f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}", f"--memory={64 * 2**30}"],
        # its own process group (stopped as one) but this session: with the kernel's autogroup
        # scheduling a session is one CPU share, and Ray's jobs must not get a share of their own
        stdout=open(log, "w"), stderr=subprocess.STDOUT, process_group=0)
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log.read_text():
        if head.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"ray start failed: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    return head, f"127.0.0.1:{port}"


def stop_ray(head: subprocess.Popen) -> None:
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    head.wait(timeout=10)


def versions(root: Path, fixtures: Path, kind: str, count: int) -> list[dict]:
    """`count` versions of one model in a fresh registry; the job specs the daemon would make."""
    model = root / kind
    model.mkdir(parents=True)
    (model / "convrepair.toml").write_text(DIGITS if kind == "real" else NOOP)
    shutil.copy(fixtures / "digits_test_nchw.npz", model / "data.npz")
    specs = []
    for number in range(1, count + 1):
        version = model / str(number)
        version.mkdir()
        shutil.copy(fixtures / "torch_cnn.pt2", version / "model.pt2")
        specs.append({"job_id": number, "attempt": 1, "version_dir": str(version), "model_file": str(version / "model.pt2"),
                      "target": "onnx" if kind == "real" else "no-such-target"})
    return specs


def run_jobs(executor, specs: list[dict], workers: int, sign_key: Path | None) -> tuple[float, list]:
    """Wall seconds for all jobs (at most `workers` at a time) and their results."""
    from convrepair.daemon.executors import Lost
    from convrepair.daemon.queue import Job

    pending, running, results = list(specs), [], []
    started = time.perf_counter()
    while pending or running:
        while pending and len(running) < workers:
            spec = dict(pending.pop(0), sign_key=str(sign_key) if sign_key else None)
            job = Job(spec["job_id"], "bench", str(spec["job_id"]), spec["target"], "-", "running", 1, 0.0, 0.0, None, None, None)
            running.append(executor.submit(job, spec))
        for dispatched in list(running):
            result = executor.poll(dispatched)
            if result is not None:
                if isinstance(result, Lost):
                    raise SystemExit(f"a task was lost: {result.reason}")
                running.remove(dispatched)
                results.append(result)
        time.sleep(0.02)
    return time.perf_counter() - started, results


def queue_bench(temp: Path, count: int) -> float:
    """Seconds per job for the queue's own transitions (enqueue, claim, finish), synchronous=FULL."""
    from convrepair.daemon.queue import JobQueue

    queue = JobQueue(temp / "queue-bench.sqlite")
    started = time.perf_counter()
    for number in range(count):
        queue.enqueue("m", str(number), "onnx", f"{number:064x}")
    for _ in range(count):
        job = queue.claim(lease_seconds=30)
        queue.placed(job.id, "local", "h", None)
        queue.finish(job.id, True, None, "{}")
    seconds = time.perf_counter() - started
    queue.close()
    return seconds / count


def signing_bench(results_dir: Path, key: Path, count: int) -> float:
    from convrepair.ledger.log import write_signed_log

    report = json.loads((results_dir / "repair.json").read_text())
    started = time.perf_counter()
    for number in range(count):
        write_signed_log(report, results_dir / f"bench-{number}.dsse.json", key, "2026-01-01T00:00:00+00:00")
    seconds = (time.perf_counter() - started) / count
    for number in range(count):
        (results_dir / f"bench-{number}.dsse.json").unlink()
    return seconds


def transfer_bench(megabytes: int) -> float:
    """MB/s for model bytes through Ray's object store to a task and back (one node: shared memory)."""
    import ray

    @ray.remote(num_cpus=1)
    def echo(data: bytes) -> bytes:
        return data

    payload = os.urandom(megabytes * 2**20)
    ray.get(echo.remote(b"warm"))
    started = time.perf_counter()
    assert len(ray.get(echo.remote(ray.put(payload)))) == len(payload)
    return 2 * megabytes / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", type=Path, default=Path("fixtures/out"))
    parser.add_argument("-n", "--noop", type=int, default=8, help="no-op jobs per executor and round")
    parser.add_argument("--real", type=int, default=4, help="real fixture jobs per executor and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, executors interleaved (medians are printed)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="jobs at a time")
    parser.add_argument("--ray-address", default=None)
    args = parser.parse_args()
    from convrepair.daemon.executors import open_executor

    temp = Path(tempfile.mkdtemp(prefix="cr-exbench-", dir="/tmp"))
    load_before = os.getloadavg()[0]
    head, address = (None, args.ray_address) if args.ray_address else start_ray(temp)
    runs: dict[tuple[str, str], list[tuple[float, int, float]]] = {}
    try:
        key_dir = temp / "keys"
        subprocess.run([sys.executable, "-m", "convrepair", "keys", "init", "--name", "bench", "--dir", str(key_dir),
                        "--trust", str(key_dir / "trust.json"), "--role", "service"], check=True, capture_output=True)
        key = key_dir / "bench.key"
        executors, opened = {}, {}
        for name in ("local", "ray"):
            started = time.perf_counter()
            executors[name] = open_executor(name, memory_mb=8192, job_timeout=600, ray_address=address)
            opened[name] = time.perf_counter() - started
            run_jobs(executors[name], versions(temp / f"warm-{name}", args.fixtures, "noop", 1), 1, None)  # caches, a Ray worker
        for round_ in range(args.rounds):
            for kind, count in (("noop", args.noop), ("real", args.real)):
                for name in (("local", "ray") if round_ % 2 == 0 else ("ray", "local")):
                    specs = versions(temp / f"{name}-{round_}" / "registry", args.fixtures, kind, count)
                    seconds, results = run_jobs(executors[name], specs, args.workers, key if kind == "real" else None)
                    ok = sum(r.ok for r in results)
                    if ok != (count if kind == "real" else 0):
                        raise SystemExit(f"{name} {kind}: {ok} of {count} jobs succeeded: {[r.error for r in results if not r.ok][:2]}")
                    latencies = sorted(r.seconds for r in results)
                    runs.setdefault((name, kind), []).append((seconds, count, latencies[len(latencies) // 2]))
                    last_real = Path(results[0].result["results"]) if kind == "real" else None
        transfer = transfer_bench(64)
        for executor in executors.values():
            executor.close()
        queue_seconds = queue_bench(temp, 500)
        signing_seconds = signing_bench(last_real, key, 20)
    finally:
        if head is not None:
            stop_ray(head)
        shutil.rmtree(temp, ignore_errors=True)

    def median(values: list[float]) -> float:
        values = sorted(values)
        return values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2

    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    if autogroup.exists() and autogroup.read_text().strip() == "1" and args.ray_address:
        print("note: autogroup scheduling is on and the Ray cluster runs in another session: on a busy machine its jobs "
              "get a CPU share of their own")
    print(f"executor bench on {os.cpu_count()} CPU cores, {args.workers} jobs at a time, {args.rounds} rounds interleaved; "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
          f"(Ray: {'the cluster at ' + args.ray_address if args.ray_address else 'one local head node'})")
    print(f"{'executor':<9}{'job':<6}{'jobs':>5}{'wall s':>9}{'jobs/s':>9}{'job latency s':>15}{'connect s':>11}")
    summary = {}
    for (name, kind), values in sorted(runs.items()):
        rate = median([count / seconds for seconds, count, _ in values])
        latency = median([lat for _, _, lat in values])
        summary[(name, kind)] = (rate, latency)
        print(f"{name:<9}{kind:<6}{values[0][1]:>5}{median([s for s, _, _ in values]):>9.2f}{rate:>9.3f}{latency:>15.2f}"
              f"{opened[name]:>11.2f}")
    noop_local, noop_ray = summary[("local", "noop")][1], summary[("ray", "noop")][1]
    print(f"per-job overhead (no-op job latency, median): local {noop_local:.2f} s, ray {noop_ray:.2f} s "
          f"(ray adds {noop_ray - noop_local:+.2f} s)")
    real_local, real_ray = summary[("local", "real")][1], summary[("ray", "real")][1]
    print(f"real job latency (median): local {real_local:.2f} s, ray {real_ray:.2f} s (ray/local {real_ray / real_local:.2f}x)")
    print(f"queue: {queue_seconds * 1000:.2f} ms per job (enqueue+claim+placed+finish, synchronous=FULL) "
          f"= {1 / queue_seconds:.0f} jobs/s")
    print(f"signing one repair log (DSSE; hashes the job's files): {signing_seconds * 1000:.1f} ms")
    print(f"Ray object store, 64 MB to a task and back: {transfer:.0f} MB/s")


if __name__ == "__main__":
    main()
