"""/healthz and Prometheus /metrics on 127.0.0.1 (a thread of the daemon)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Metrics:
    def __init__(self, queue):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.queue = queue
        self.registry = CollectorRegistry()
        self.jobs = Gauge("convrepair_jobs", "Jobs by state", ["state"], registry=self.registry)
        self.duration = Histogram("convrepair_job_seconds", "Job duration", registry=self.registry,
                                  buckets=(1, 5, 15, 30, 60, 120, 300, 900))
        self.agreement = Gauge("convrepair_label_agreement", "Label agreement of the last check", ["model", "target"], registry=self.registry)
        self.repairs = Counter("convrepair_repairs_applied_total", "Repairs applied", ["model"], registry=self.registry)
        self.lock = threading.Lock()

    def observe(self, job, state, result) -> None:
        with self.lock:
            self.duration.observe(result.seconds)
            payload = result.result or {}
            if payload.get("label_agreement") is not None:
                self.agreement.labels(job.model, job.target).set(payload["label_agreement"])
            if payload.get("verdict") in ("repaired", "improved"):
                self.repairs.labels(job.model).inc()

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        with self.lock:
            counts = getattr(self, "_counts", {})
            for state in ("queued", "running", "done", "failed"):
                self.jobs.labels(state).set(counts.get(state, 0))
            return generate_latest(self.registry)

    def update_counts(self, counts: dict) -> None:
        """From the daemon's thread (the SQLite connection stays there)."""
        with self.lock:
            self._counts = dict(counts)


def serve(metrics: Metrics, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/healthz":
                body, kind = json.dumps({"status": "ok"}).encode(), "application/json"
            elif self.path == "/metrics":
                body, kind = metrics.render(), "text/plain; version=0.0.4"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
