"""The daemon loop: scan (and watch) the registry, queue jobs, run them in workers, report.

It adds no stage logic: a job is `convrepair.daemon.job`, which calls convert, check, repair
and the ledger. Start-up requeues what a killed predecessor left running and scans the whole
registry, so events missed while it was down are not lost.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from convrepair.daemon import worker
from convrepair.daemon.config import load_model_config
from convrepair.daemon.queue import JobQueue
from convrepair.errors import BadInput
from convrepair.fsutil import combined_digest, file_digests

log = logging.getLogger("convrepair.daemon")


@dataclass
class DaemonConfig:
    registry: Path
    state_dir: Path
    once: bool = False
    workers: int = 1
    quiet_seconds: float = 5.0
    scan_interval: float = 2.0
    job_timeout: float = 900.0
    memory_mb: int = 8192
    grace_seconds: float = 30.0
    sign_key: Path | None = None
    poll: bool = False
    registry_kind: str = "directory"
    http_port: int | None = None
    http_host: str = "127.0.0.1"


class Daemon:
    def __init__(self, config: DaemonConfig):
        from convrepair.plugins import default_registry

        self.config = config
        kinds = default_registry().registries
        if config.registry_kind not in kinds:
            raise BadInput(f"unknown registry kind '{config.registry_kind}' (available: {', '.join(sorted(kinds))})")
        self.registry = kinds[config.registry_kind].open(str(config.registry), quiet_seconds=config.quiet_seconds)
        self.queue = JobQueue(Path(config.state_dir) / "queue.sqlite")
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.running: dict[int, tuple] = {}
        self.metrics = None
        self._digests: dict[tuple, str] = {}

    # --- scanning ---------------------------------------------------------------------------

    def scan(self) -> int:
        """Queue a job for every ready version and target that has no finished result."""
        from convrepair.plugins import default_registry

        added = 0
        known_targets = default_registry().targets()
        for model_dir in self.registry.models():
            try:
                config = load_model_config(model_dir / "convrepair.toml", known_targets)
                config_error = None
            except BadInput as exc:
                config, config_error = None, exc.one_line()
            for version in self.registry.versions(model_dir):
                pending = [t for t in (config.targets if config else ["<config>"])
                           if not (config and self.registry.results_dir(version, t).exists())]
                if not pending or not self.registry.ready(version):
                    continue
                digest = self._digest(version.model_file)
                for target in pending:
                    job_id = self.queue.enqueue(version.model, version.version, target, digest)
                    if job_id is None:
                        continue
                    added += 1
                    if config_error:
                        self.queue.fail(job_id, config_error)
                        log.info(json.dumps({"event": "failed", "job": job_id, "model": version.model, "error": config_error}))
                    else:
                        log.info(json.dumps({"event": "queued", "job": job_id, "model": version.model,
                                             "version": version.version, "target": target}))
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
        return {"job_id": job.id, "version_dir": str(version.path), "model_file": str(version.model_file), "target": job.target,
                "sign_key": str(self.config.sign_key) if self.config.sign_key else None}

    def _start_jobs(self) -> None:
        while len(self.running) < self.config.workers and not self.stopping.is_set():
            job = self.queue.claim(lease_seconds=self.config.job_timeout + 60)
            if job is None:
                return
            proc, spec_file = worker.start(self._spec(job), self.config.memory_mb)
            self.running[job.id] = (proc, spec_file, time.monotonic(), job)
            log.info(json.dumps({"event": "started", "job": job.id, "model": job.model, "version": job.version, "target": job.target}))

    def _collect(self) -> None:
        for job_id, (proc, spec_file, started, job) in list(self.running.items()):
            self.queue.heartbeat(job_id, self.config.job_timeout + 60)
            result = worker.collect(proc, spec_file, started, self.config.job_timeout)
            if result is None:
                continue
            del self.running[job_id]
            state = self.queue.finish(job_id, result.ok, result.error, json.dumps(result.result) if result.result else None)
            if self.metrics:
                self.metrics.observe(job, state, result)
            log.info(json.dumps({"event": state, "job": job_id, "seconds": round(result.seconds, 2), "error": result.error}))

    def run(self) -> int:
        orphans = self.queue.requeue_running()
        if orphans:
            log.info(json.dumps({"event": "requeued", "jobs": orphans}))
        if self.config.http_port is not None:
            from convrepair.daemon.http import Metrics, serve

            self.metrics = Metrics(self.queue)
            serve(self.metrics, self.config.http_port, self.config.http_host)
        observer = None if self.config.once else self._watch()
        self.scan()
        notify("READY=1")
        try:
            while True:
                self._collect()
                if self.metrics:
                    self.metrics.update_counts(self.queue.counts())
                if self.stopping.is_set():
                    if not self.running:
                        break
                    time.sleep(0.1)
                    continue
                self._start_jobs()
                if self.config.once and not self.running:
                    self.scan()
                    if not self.queue.counts().get("queued") and not self._waiting_versions():
                        break
                self.wake.wait(0.2 if self.running else self.config.scan_interval)
                if self.wake.is_set() or not self.config.once:
                    self.wake.clear()
                    self.scan()
                notify("WATCHDOG=1")
        finally:
            if observer is not None:
                observer.stop()
            self._stop_running()
            self.queue.close()
        return 0

    def _waiting_versions(self) -> bool:
        """--once waits for versions still inside their quiet period."""
        for model_dir in self.registry.models():
            for version in self.registry.versions(model_dir):
                if version.model_file is not None and not self.registry.ready(version):
                    return True
        return False

    def _stop_running(self) -> None:
        deadline = time.monotonic() + self.config.grace_seconds
        while self.running and time.monotonic() < deadline:
            self._collect()
            time.sleep(0.1)
        for job_id, (proc, spec_file, _, _) in list(self.running.items()):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            self.queue.finish(job_id, False, "stopped by shutdown before it finished")

    def stop(self, *_args) -> None:
        log.info(json.dumps({"event": "stopping", "running": len(self.running)}))
        self.stopping.set()
        self.wake.set()

    def _watch(self):
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
            from watchdog.observers.polling import PollingObserver
        except ImportError:
            return None
        daemon = self

        class Wake(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                daemon.wake.set()

        observer = PollingObserver() if self.config.poll else Observer()
        try:
            observer.schedule(Wake(), str(self.config.registry), recursive=True)
            observer.start()
        except OSError as exc:
            if getattr(exc, "errno", None) == 28:
                raise BadInput("inotify watch limit reached; raise it with `sysctl fs.inotify.max_user_watches=524288` "
                               "or run with --poll", self.config.registry) from None
            raise
        return observer


def notify(message: str) -> None:
    """systemd's sd_notify: one datagram to $NOTIFY_SOCKET (an '@' means the abstract namespace)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        pass
