"""The daemon loop: scan (and watch) the registry, queue jobs, run them in workers, report.

It adds no stage logic: a job is `convrepair.daemon.job`, which calls convert, check, repair
and the ledger. One daemon holds a state directory (`convrepair.daemon.lock`). Start-up requeues
the jobs whose lease ran out (a killed predecessor's, never a live one) and scans the whole
registry, so events missed while it was down are not lost. Idle means idle: the loop scans when
the watcher reports a change to the registry's inputs, often (half a quiet period, at most
`scan_interval`) while a version waits to be ready, and every `rescan_seconds` besides; nothing
it reads or writes wakes it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from convrepair.daemon.executors import Dispatched, Lost, open_executor
from convrepair.daemon.http import Health
from convrepair.daemon.job import scratch_name
from convrepair.daemon.lock import StateLock
from convrepair.daemon.logs import event
from convrepair.daemon.queue import JobQueue
from convrepair.daemon.systemd import notify
from convrepair.errors import BadInput
from convrepair.fsutil import combined_digest, file_digests

TICK_SECONDS = 5.0  # the loop wakes at least this often (health, leases), scanning or not
MIN_SCAN_GAP = 0.5  # a burst of change events (a large copy) is one scan per this long


@dataclass
class DaemonConfig:
    registry: Path
    state_dir: Path
    once: bool = False
    workers: int = 1
    quiet_seconds: float = 5.0
    scan_interval: float = 2.0  # rescans while a version waits for its quiet period
    rescan_seconds: float = 60.0  # a full scan when nothing happened (events a watcher can miss)
    job_timeout: float = 900.0
    lease_seconds: float = 30.0  # a running job's lease, renewed while it runs; once run out, it is requeued
    parse_grace_seconds: float | None = None  # default: 10 quiet periods
    memory_mb: int = 8192
    grace_seconds: float = 30.0
    sign_key: Path | None = None
    poll: bool = False
    registry_kind: str = "directory"
    http_port: int | None = None
    http_host: str = "127.0.0.1"
    executor: str = "local"  # local worker processes, or "ray" (convrepair.daemon.executors)
    ray_address: str | None = None


class Daemon:
    def __init__(self, config: DaemonConfig):
        from convrepair.plugins import default_registry

        self.config = config
        kinds = default_registry().registries
        if config.registry_kind not in kinds:
            raise BadInput(f"unknown registry kind '{config.registry_kind}' (available: {', '.join(sorted(kinds))})")
        self.lock = StateLock(Path(config.state_dir))  # before anything touches the queue
        try:
            self.registry = kinds[config.registry_kind].open(str(config.registry), quiet_seconds=config.quiet_seconds,
                                                             parse_grace_seconds=config.parse_grace_seconds)
            self._remote = getattr(self.registry, "remote", False)  # e.g. MLflow: jobs fetch and publish (registry.RemoteRegistry)
            self.queue = JobQueue(Path(config.state_dir) / "queue.sqlite")
        except BaseException:
            self.lock.release()
            raise
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.running: dict[int, Dispatched] = {}
        self.health = Health(stall_seconds=max(60.0, 12 * TICK_SECONDS),
                             watcher="none" if config.once else ("poll" if config.poll else "inotify"))
        self.metrics = None
        self.observer = None
        self._counts: dict[str, int] = {}
        self.waiting = 0  # versions not ready yet at the last scan
        self._digests: dict[tuple, str] = {}
        self._renewed: dict[int, float] = {}

    # --- scanning ---------------------------------------------------------------------------

    def scan(self) -> int:
        """Queue a job for every ready version and target that has no finished result."""
        from convrepair.plugins import default_registry

        added, waiting = 0, 0
        known_targets = default_registry().targets()
        for model_dir in self.registry.models():
            try:
                config = self.registry.model_config(model_dir, known_targets)
                config_error = None
            except BadInput as exc:
                config, config_error = None, exc.one_line()
            for version in self.registry.versions(model_dir):
                pending = [t for t in (config.targets if config else ["<config>"])
                           if not (config and self.registry.finished(version, t))]
                if not pending:
                    continue
                if not self.registry.ready(version):
                    waiting += version.model_file is not None
                    continue
                digest = self.registry.input_digest(version) if self._remote else self._digest(version.model_file)
                for target in pending:
                    job_id = self.queue.enqueue(version.model, version.version, target, digest)
                    if job_id is None:
                        continue
                    added += 1
                    if config_error:
                        self.queue.fail(job_id, config_error)
                        event("failed", job=job_id, model=version.model, error=config_error)
                    else:
                        event("queued", job=job_id, model=version.model, version=version.version, target=target)
        self.waiting = waiting
        return added

    def _digest(self, path: Path) -> str:
        """sha256 of a model, re-hashed only when a file's size or mtime changed (scans are frequent)."""
        files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
        key = (str(path), tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
        if key not in self._digests:
            self._digests[key] = combined_digest(file_digests(path))
        return self._digests[key]

    # --- running ----------------------------------------------------------------------------

    def _spec(self, job) -> dict:
        version = self.registry.version(job.model, job.version)
        spec = {"job_id": job.id, "attempt": job.attempts, "version_dir": str(version.path), "model_file": str(version.model_file),
                "target": job.target, "sign_key": str(self.config.sign_key) if self.config.sign_key else None}
        if self._remote:  # the job downloads the version itself and writes its results back (registry.run_remote_job)
            spec.update(remote=True, registry_kind=self.config.registry_kind, registry=str(self.config.registry),
                        model=job.model, version=job.version, downloads=str(Path(self.config.state_dir).resolve() / "downloads"))
        return spec

    def _scratch_dirs(self, job, attempts: bool = False) -> list[Path]:
        """This attempt's scratch folder (with `attempts`: every attempt's) of a directory-registry job."""
        try:
            results = self.registry.results_dir(self.registry.version(job.model, job.version), job.target).parent
        except (AttributeError, KeyError, OSError):
            return []
        if attempts:
            return sorted(results.glob(scratch_name(job.id, "*")))
        return [results / scratch_name(job.id, job.attempts)]

    def _start_jobs(self) -> None:
        while len(self.running) < self.config.workers and not self.stopping.is_set():
            job = self.queue.claim(lease_seconds=self.config.lease_seconds)
            if job is None:
                return
            for stale in self._scratch_dirs(job, attempts=True):  # earlier attempts died with their daemon
                _remove(stale)
            try:
                spec = self._spec(job)
            except KeyError:
                self.queue.finish(job.id, False, f"{job.model}/{job.version} is no longer in the registry")
                event("failed", job=job.id, model=job.model, version=job.version, error="version removed")
                continue
            self.running[job.id] = dispatched = self.executor.submit(job, spec)
            self.queue.placed(job.id, self.executor.name, dispatched.where.host, dispatched.where.node)
            self._renewed[job.id] = time.monotonic()
            event("started", job=job.id, model=job.model, version=job.version, target=job.target, attempt=job.attempts)

    def _collect(self) -> None:
        for job_id, dispatched in list(self.running.items()):
            job, result = dispatched.job, self.executor.poll(dispatched)
            if isinstance(result, Lost):  # no more heartbeats: the queue requeues it when its lease runs out
                del self.running[job_id], self._renewed[job_id]
                event("lost", job=job_id, model=job.model, version=job.version, target=job.target, error=result.reason)
                continue
            if result is None:
                if time.monotonic() - self._renewed[job_id] >= self.config.lease_seconds / 3:
                    self.queue.heartbeat(job_id, self.config.lease_seconds)
                    self._renewed[job_id] = time.monotonic()
                continue
            del self.running[job_id], self._renewed[job_id]
            self.queue.placed(job_id, self.executor.name, dispatched.where.host, dispatched.where.node)
            if not result.ok:  # the job removes its own scratch; a killed one cannot
                for scratch in self._scratch_dirs(job):
                    _remove(scratch)
            state = self.queue.finish(job_id, result.ok, result.error, json.dumps(result.result) if result.result else None,
                                      retry=result.retry)
            if self.metrics:
                self.metrics.observe(job, state, result)
            event(state, job=job_id, model=job.model, version=job.version, target=job.target, seconds=round(result.seconds, 2),
                  error=result.error, retry=None if result.ok else result.retry)

    def _tick(self) -> None:
        """Health and metrics from the daemon's own thread; leases that ran out go back to the queue."""
        self.health.last_tick = time.monotonic()
        try:
            orphans = self.queue.requeue_orphans(keep=set(self.running))
            counts = self.queue.counts()
            self.health.queue_error = None
        except sqlite3.Error as exc:
            self.health.queue_error = str(exc)
            return
        if orphans:
            event("requeued", jobs=orphans, reason="lease expired")
            self.wake.set()
        if self.metrics:
            self.metrics.update_counts(counts)
        self._counts = counts

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.lock.release()

    def _run(self) -> int:
        from convrepair import __version__

        config = self.config
        observer = None
        self.executor = open_executor(config.executor, memory_mb=config.memory_mb, job_timeout=config.job_timeout,
                                      ray_address=config.ray_address, remote_registry=self._remote)
        try:
            if config.http_port is not None:  # first: a port in use stops the daemon with one line
                from convrepair.daemon.http import Metrics, serve

                self.metrics = Metrics(self.health)
                serve(self.metrics, config.http_port, config.http_host)
            event("starting", convrepair=__version__, registry=str(config.registry), registry_kind=config.registry_kind,
                  state_dir=str(Path(config.state_dir).resolve()), watcher=self.health.watcher, workers=config.workers,
                  http=f"{config.http_host}:{config.http_port}" if config.http_port is not None else "off", pid=os.getpid())
            if not config.once and not self._remote:
                from convrepair.daemon.registry import is_result_path
                from convrepair.daemon.watch import start_watcher

                root, state = Path(config.registry), Path(config.state_dir).resolve()
                observer = start_watcher(root, config.poll, config.scan_interval, self.wake.set,  # our own writes: not a change
                                         lambda path: is_result_path(root, path) or Path(path).is_relative_to(state))
                self.health.observer = self.observer = observer
                if observer is None:
                    self.health.watcher = "none (watchdog is not installed: scans every --scan-interval)"
            self._tick()
            self.scan()
            if config.once and not self.registry.models():
                event("empty", registry=str(config.registry),
                      reason="no models here (a model is a folder with convrepair.toml and numbered version folders)")
            notify("READY=1")
            self._loop(observer)
        finally:
            if observer is not None:
                observer.stop()
            self._stop_running()
            self.executor.close()
            self.queue.close()
        return 0

    def _loop(self, observer) -> None:
        config, last_scan = self.config, time.monotonic()
        while True:
            self._collect()
            self._tick()
            if self.stopping.is_set():
                if not self.running:
                    return
                time.sleep(0.1)
                continue
            self._start_jobs()
            if config.once and not self.running and not self.waiting and not any(self._counts.get(s) for s in ("queued", "running")):
                event("finished", **{state: self._counts.get(state, 0) for state in ("done", "failed")})
                return
            now = time.monotonic()
            timeout = 0.2 if self.running else TICK_SECONDS
            # while a version waits for its quiet period, look often enough to see it settle; else events suffice
            every = min(config.scan_interval, max(config.quiet_seconds / 2, 0.25)) if self.waiting else \
                config.scan_interval if observer is None and not config.once else None
            if every is not None:
                timeout = min(timeout, max(0.05, last_scan + every - now))
            self.wake.wait(timeout)
            now = time.monotonic()
            due = self.wake.is_set() or now - last_scan >= config.rescan_seconds or every is not None and now - last_scan >= every
            if due and not self.stopping.is_set():
                time.sleep(max(0.0, last_scan + MIN_SCAN_GAP - now))
                self.wake.clear()
                self.scan()
                last_scan = time.monotonic()
            notify("WATCHDOG=1")

    def _stop_running(self) -> None:
        deadline = time.monotonic() + self.config.grace_seconds
        while self.running and time.monotonic() < deadline:
            self._collect()
            time.sleep(0.1)
        for job_id, dispatched in list(self.running.items()):
            job = dispatched.job
            self.executor.kill(dispatched)
            for scratch in self._scratch_dirs(job):
                _remove(scratch)
            self.queue.finish(job_id, False, "stopped by shutdown before it finished", retry=True)

    def stop(self, *_args) -> None:
        event("stopping", running=len(self.running))
        self.stopping.set()
        self.wake.set()


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
