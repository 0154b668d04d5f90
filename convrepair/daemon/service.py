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
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from convrepair.daemon.executors import Dispatched, Lost, open_executor
from convrepair.daemon.http import Health
from convrepair.daemon.job import scratch_name
from convrepair.daemon.lock import StateLock
from convrepair.daemon.logs import event
from convrepair.daemon.options import DaemonConfig, RegistryUnavailable
from convrepair.daemon.queue import JobQueue
from convrepair.daemon.scan import Scanner
from convrepair.daemon.systemd import notify
from convrepair.errors import BadInput

TICK_SECONDS = 5.0  # the loop wakes at least this often (health, leases), scanning or not
MIN_SCAN_GAP = 0.5  # a burst of change events (a large copy) is one scan per this long


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
                                                             parse_grace_seconds=config.parse_grace_seconds,
                                                             allow_read=tuple(config.allow_read))
            self._remote = getattr(self.registry, "remote", False)  # e.g. MLflow: jobs fetch and publish (registry.RemoteRegistry)
            self.queue = JobQueue(Path(config.state_dir) / "queue.sqlite")
            self.scanner = Scanner(self.registry, self.queue, self._remote)
        except BaseException:
            self.lock.release()
            raise
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.running: dict[int, Dispatched] = {}
        self.health = Health(stall_seconds=max(60.0, 12 * TICK_SECONDS),
                             watcher="none" if config.once else ("poll" if config.poll or self._remote else "inotify"))
        self.metrics = None
        self.observer = None
        self._counts: dict[str, int] = {}
        self.waiting = 0  # versions not ready yet at the last scan
        self._renewed: dict[int, float] = {}

    # --- scanning ---------------------------------------------------------------------------

    def scan(self) -> int:
        """Queue a job for every ready version and target that has no finished result."""
        found = self.scanner.scan()
        for queued in found.queued:
            if queued.error:
                event("failed", logging.WARNING, job=queued.job, model=queued.model, reason="config-error", error=queued.error)
                if self.metrics:
                    self.metrics.failed_before_start(queued.model, queued.target, "config-error")
            else:
                event("queued", job=queued.job, model=queued.model, version=queued.version, target=queued.target)
        self.waiting = found.waiting
        self.health.registry_seen("registry", getattr(self.registry, "problem", None))
        return len(found.queued)

    # --- running ----------------------------------------------------------------------------

    def _spec(self, job) -> dict:
        version = self.registry.version(job.model, job.version)
        spec = {"job_id": job.id, "attempt": job.attempts, "version_dir": str(version.path), "model_file": str(version.model_file),
                "target": job.target, "sign_key": str(self.config.sign_key) if self.config.sign_key else None,
                # never readable by the job's models, whatever a config names (convrepair.daemon.reads)
                "state_dir": str(Path(self.config.state_dir).resolve()),
                "allow_read": [str(Path(p).resolve()) for p in self.config.allow_read]}
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
                event("failed", logging.WARNING, job=job.id, model=job.model, version=job.version, reason="version-removed",
                      error="version removed")
                if self.metrics:
                    self.metrics.failed_before_start(job.model, job.target, "version-removed")
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
            if result.transient:  # the registry, not the job: no attempt spent, wait for the server with backoff
                delay = self.queue.postpone(job_id, result.error, self.config.backoff_seconds, self.config.max_backoff_seconds)
                self.health.registry_seen("jobs", result.error)
                if self.metrics:
                    self.metrics.observe(job, "waiting", result)
                event("waiting-for-registry", logging.WARNING, job=job_id, model=job.model, version=job.version,
                      target=job.target, reason=result.reason, error=result.error, retry_in_s=round(delay, 2))
                continue
            if self._remote:  # not an outage: health recovers, and a job that got through polls again now
                self.health.registry_seen("jobs", None)
                if result.ok:
                    getattr(self.registry, "recovered", lambda: None)()
            state = self.queue.finish(job_id, result.ok, result.error, json.dumps(result.result) if result.result else None,
                                      retry=result.retry)
            if self.metrics:
                self.metrics.observe(job, state, result)
            log = getattr(self.executor, "log_path", lambda _job: None)(job)
            event(state, logging.INFO if result.ok else logging.WARNING, job=job_id, model=job.model, version=job.version,
                  target=job.target, seconds=round(result.seconds, 2), reason=None if result.ok else result.reason or "error",
                  error=result.error, retry=None if result.ok else result.retry,
                  log=str(log) if log is not None and not result.ok else None)

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
                                      ray_address=config.ray_address, remote_registry=self._remote, workers=config.workers,
                                      log_dir=Path(config.state_dir) / "logs")
        try:
            if config.http_port is not None:  # first: a port in use stops the daemon with one line
                from convrepair.daemon.http import Metrics, serve

                self.metrics = Metrics(self.health)
                serve(self.metrics, config.http_port, config.http_host)
            event("starting", convrepair=__version__, registry=str(config.registry), registry_kind=config.registry_kind,
                  state_dir=str(Path(config.state_dir).resolve()), watcher=self.health.watcher, workers=config.workers,
                  **self.executor.describe(),
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
            if config.once and "registry" in self.health.degraded:  # nothing was looked at: not "no models here"
                raise RegistryUnavailable(self.health.degraded["registry"])
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
            self._give_up_on_outage()
            now = time.monotonic()
            backoff = self.queue.next_due()  # a postponed job may run again then
            timeout = min(0.2 if self.running else TICK_SECONDS, TICK_SECONDS if backoff is None else max(0.05, backoff))
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

    def _give_up_on_outage(self) -> None:
        """`--once` waits out a registry outage as long as one job may take, then stops with one
        line; its jobs stay queued (no attempt spent) for the next run."""
        since = self.health.degraded_since
        if not self.config.once or self.running or since is None:
            return
        if time.monotonic() - since > self.config.job_timeout:
            left = self._counts.get("queued", 0)
            why = "; ".join(self.health.degraded.values())
            raise RegistryUnavailable(f"registry {self.config.registry} stayed unreachable for {self.config.job_timeout:.0f} s: "
                                      f"{why} ({left} job(s) left queued for the next run)")

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
