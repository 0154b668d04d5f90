"""/healthz and Prometheus /metrics on 127.0.0.1 (a thread of the daemon).

`/healthz` is the readiness and liveness probe: 200 while the main loop ticks, the queue answers
and the watcher runs; 503 with the reason otherwise. The daemon's thread reports its state into
`Health`; this thread never touches the SQLite connection.
"""

from __future__ import annotations

import errno
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from convrepair.errors import BadInput

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600)


@dataclass
class Health:
    """What the daemon's own thread last saw; read by the HTTP thread."""

    stall_seconds: float = 120.0
    watcher: str = "none"  # inotify | poll | none (--once)
    observer: Any = None  # the watchdog observer thread, asked at each request
    queue_error: str | None = None
    last_tick: float = field(default_factory=time.monotonic)

    def problems(self) -> list[str]:
        out = []
        if self.observer is not None and not self.observer.is_alive():
            out.append(f"the {self.watcher} watcher has stopped")
        if self.queue_error:
            out.append(f"the job queue fails: {self.queue_error}")
        idle = time.monotonic() - self.last_tick
        if idle > self.stall_seconds:
            out.append(f"the main loop has not run for {idle:.0f} s")
        return out


class Metrics:
    def __init__(self, health: Health | None = None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from convrepair import __version__

        self.health = health or Health()
        self.registry = CollectorRegistry()
        self.jobs = Gauge("convrepair_jobs", "Jobs in the queue by state", ["state"], registry=self.registry)
        self.duration = Histogram("convrepair_job_duration_seconds", "Wall-clock time of one job attempt",
                                  ["model", "target", "outcome"], registry=self.registry, buckets=DURATION_BUCKETS)
        self.agreement = Gauge("convrepair_label_agreement_ratio", "Label agreement (0..1) of the last finished job's check",
                               ["model", "target"], registry=self.registry)
        self.failed = Counter("convrepair_jobs_failed_total", "Job attempts that failed",
                              ["model", "target", "retry"], registry=self.registry)
        self.repairs = Counter("convrepair_repairs_applied_total", "Repairs applied", ["model"], registry=self.registry)
        Gauge("convrepair_build_info", "The running convrepair (always 1)", ["version"], registry=self.registry).labels(__version__).set(1)
        self.lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def observe(self, job, state: str, result) -> None:
        """One finished attempt; `state` is the job's state after it (done | queued again | failed)."""
        outcome = "retried" if state == "queued" else state  # done | retried | failed
        with self.lock:
            self.duration.labels(job.model, job.target, outcome).observe(result.seconds)
            if not result.ok:
                self.failed.labels(job.model, job.target, "yes" if outcome == "retried" else "no").inc()
            payload = result.result or {}
            if payload.get("label_agreement") is not None:
                self.agreement.labels(job.model, job.target).set(payload["label_agreement"])
            if payload.get("verdict") in ("repaired", "improved"):
                self.repairs.labels(job.model).inc()

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        with self.lock:
            for state in ("queued", "running", "done", "failed"):
                self.jobs.labels(state).set(self._counts.get(state, 0))
            return generate_latest(self.registry)

    def update_counts(self, counts: dict) -> None:
        """From the daemon's thread (the SQLite connection stays there)."""
        with self.lock:
            self._counts = dict(counts)


def serve(metrics: Metrics, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Start the endpoint thread; a port in use is bad input (exit 2), not a crash."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            status = 200
            if self.path == "/healthz":
                problems = metrics.health.problems()
                status = 503 if problems else 200
                body = json.dumps({"status": "unhealthy" if problems else "ok", "problems": problems,
                                   "watcher": metrics.health.watcher}).encode()
                kind = "application/json"
            elif self.path == "/metrics":
                body, kind = metrics.render(), "text/plain; version=0.0.4"
            else:
                self.send_error(404)
                return
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args) -> None:
            pass

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise BadInput(f"port {port} on {host} is in use (another daemon?); pick another --http-port or use --no-http") from None
        raise BadInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    threading.Thread(target=server.serve_forever, daemon=True, name="convrepair-http").start()
    return server
