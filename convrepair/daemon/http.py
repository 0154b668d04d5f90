"""/healthz and Prometheus /metrics on 127.0.0.1 (a thread of the daemon).

`/healthz` is the readiness and liveness probe: 200 while the main loop ticks, the queue answers
and the watcher runs; 503 with the reason otherwise. While the registry is unreachable it answers
200 with `"status": "degraded"` and why: the daemon is well and waits (restarting it would not help). The daemon's thread reports its state into
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
VERDICTS = ("repaired", "improved", "unproven", "already_equivalent", "not_repaired")  # anything else: "other"


@dataclass
class Health:
    """What the daemon's own thread last saw; read by the HTTP thread."""

    stall_seconds: float = 120.0
    watcher: str = "none"  # inotify | poll | none (--once)
    observer: Any = None  # the watchdog observer thread, asked at each request
    queue_error: str | None = None
    last_tick: float = field(default_factory=time.monotonic)
    degraded: dict[str, str] = field(default_factory=dict)  # what the daemon waits for (the registry), and why
    degraded_since: float | None = None  # monotonic

    def registry_seen(self, seen_by: str, problem: str | None) -> None:
        """What the scans (`registry`) and the jobs (`jobs`) last saw of the registry and its
        artifact store: an outage makes /healthz `degraded` until both see it well again."""
        if problem is None:
            self.degraded.pop(seen_by, None)
        else:
            self.degraded[seen_by] = problem if seen_by == "registry" else f"jobs wait for the registry: {problem}"
        if not self.degraded:
            self.degraded_since = None
        elif self.degraded_since is None:
            self.degraded_since = time.monotonic()

    def status(self) -> tuple[int, dict[str, Any]]:
        """The HTTP status and body of /healthz."""
        problems, degraded = self.problems(), dict(self.degraded)
        state = "unhealthy" if problems else "degraded" if degraded else "ok"
        return (503 if problems else 200), {"status": state, "problems": problems, "degraded": sorted(degraded.values()),
                                            "watcher": self.watcher}

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
        self.failed = Counter("convrepair_jobs_failed_total", "Job attempts that failed, by why (reason: timeout, "
                              "bad-input, config-error, registry-unreachable …)", ["model", "target", "retry", "reason"],
                              registry=self.registry)
        self.repairs = Counter("convrepair_repairs_applied_total", "Repairs applied", ["model"], registry=self.registry)
        self.verdicts = Counter("convrepair_repair_verdicts_total", "Finished jobs by the verdict signed for them (computed "
                                "by the job process from the held-out arrays)", ["model", "target", "verdict"],
                                registry=self.registry)
        Gauge("convrepair_build_info", "The running convrepair (always 1)", ["version"], registry=self.registry).labels(__version__).set(1)
        self.lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def observe(self, job, state: str, result) -> None:
        """One finished attempt; `state` is the job's state after it (done | queued again | failed |
        waiting: postponed for a registry outage, no attempt spent)."""
        outcome = "retried" if state in ("queued", "waiting") else state  # done | retried | failed
        with self.lock:
            self.duration.labels(job.model, job.target, outcome).observe(result.seconds)
            if not result.ok:
                self.failed.labels(job.model, job.target, "yes" if outcome == "retried" else "no",
                                   result.reason or "error").inc()
            payload = result.result or {}
            if payload.get("label_agreement") is not None:
                self.agreement.labels(job.model, job.target).set(payload["label_agreement"])
            verdict = payload.get("verdict")
            if result.ok and verdict is not None:
                self.verdicts.labels(job.model, job.target, verdict if verdict in VERDICTS else "other").inc()
            if verdict in ("repaired", "improved"):
                self.repairs.labels(job.model).inc()

    def failed_before_start(self, model: str, target: str, reason: str) -> None:
        """A job failed without running (its model's config is invalid, its version was removed)."""
        with self.lock:
            self.failed.labels(model, target, "no", reason).inc()

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
            if self.path == "/healthz":
                status, health = metrics.health.status()
                body, kind = json.dumps(health).encode(), "application/json"
            elif self.path == "/metrics":
                status, body, kind = 200, metrics.render(), "text/plain; version=0.0.4"
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
    except (OSError, OverflowError) as exc:  # OverflowError: a port past 65535 given through the API
        if getattr(exc, "errno", None) == errno.EADDRINUSE:
            raise BadInput(f"port {port} on {host} is in use (another daemon?); pick another --http-port or use --no-http") from None
        raise BadInput(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
    threading.Thread(target=server.serve_forever, daemon=True, name="convrepair-http").start()
    return server
