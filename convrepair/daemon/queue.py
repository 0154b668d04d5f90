"""A durable job queue in SQLite (WAL): queued → running → done | failed, with leases.

A job is keyed by (model, version, target, sha256 of the inputs): the same content is never
processed twice, and a changed file makes a new job. A claim is `BEGIN IMMEDIATE`; a running
job's lease is renewed by its heartbeat, so a daemon restarted after a crash requeues orphans —
only once their lease has run out, never a job another process may still be running. A failed
job goes back to the queue only when trying again can change the outcome (`retry`). A job that
met an outage of its registry (`postpone`) spends no attempt: it waits out a backoff (`not_before`)
and runs when the server is back.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  model TEXT NOT NULL, version TEXT NOT NULL, target TEXT NOT NULL, input_sha256 TEXT NOT NULL,
  state TEXT NOT NULL DEFAULT 'queued', attempts INTEGER NOT NULL DEFAULT 0,
  created REAL NOT NULL, updated REAL NOT NULL, lease_until REAL, error TEXT, result TEXT,
  UNIQUE (model, version, target, input_sha256)
);
"""


@dataclass
class Job:
    id: int
    model: str
    version: str
    target: str
    input_sha256: str
    state: str
    attempts: int
    created: float
    updated: float
    lease_until: float | None
    error: str | None
    result: str | None
    executor: str | None = None  # added columns (PLACEMENT): which executor ran the job, and where
    host: str | None = None
    node: str | None = None  # Ray's node id (None for a local worker process)
    not_before: float | None = None  # added columns (WAITING): a postponed job is not claimed before this time
    waits: int | None = None  # how often it was postponed in a row (the backoff's exponent)


PLACEMENT = ("executor", "host", "node")
WAITING = {"not_before": "REAL", "waits": "INTEGER NOT NULL DEFAULT 0"}


class JobQueue:
    def __init__(self, path: Path, max_attempts: int = 2):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_attempts = max_attempts
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self._add_columns({name: "TEXT" for name in PLACEMENT})
        self._add_columns(WAITING)

    def _add_columns(self, columns: dict[str, str]) -> None:
        """Queues made before a column existed get it (appended, so `Job(*row)` still lines up)."""
        have = {row[1] for row in self.db.execute("PRAGMA table_info(jobs)")}
        for name, kind in columns.items():
            if name not in have:
                try:
                    self.db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
                except sqlite3.OperationalError as exc:  # another process added it first
                    if "duplicate column" not in str(exc):
                        raise

    def placed(self, job_id: int, executor: str, host: str | None = None, node: str | None = None) -> None:
        """Which executor runs (ran) the job and where (None: not known yet, e.g. a Ray task not placed)."""
        self.db.execute("UPDATE jobs SET executor = ?, host = ?, node = ? WHERE id = ?",
                        (executor, host, node, job_id))

    def enqueue(self, model: str, version: str, target: str, input_sha256: str) -> int | None:
        """The new job's id, or None when this exact content was queued before.

        Looked up first: an ignored INSERT would still use up an AUTOINCREMENT id on every scan."""
        key = (model, version, target, input_sha256)
        if self.db.execute("SELECT 1 FROM jobs WHERE model = ? AND version = ? AND target = ? AND input_sha256 = ?", key).fetchone():
            return None
        now = time.time()
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO jobs (model, version, target, input_sha256, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
            (*key, now, now),
        )
        return cursor.lastrowid if cursor.rowcount == 1 else None

    def fail(self, job_id: int, error: str) -> None:
        """Fail at once, no retry (a bad config will not get better by trying again)."""
        self.db.execute("UPDATE jobs SET state = 'failed', updated = ?, error = ? WHERE id = ?", (time.time(), error, job_id))

    def claim(self, lease_seconds: float) -> Job | None:
        now = time.time()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            row = self.db.execute("SELECT id FROM jobs WHERE state = 'queued' AND (not_before IS NULL OR not_before <= ?) "
                                  "ORDER BY id LIMIT 1", (now,)).fetchone()
            if row is None:
                self.db.execute("COMMIT")
                return None
            self.db.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, updated = ?, lease_until = ? WHERE id = ?",
                (now, now + lease_seconds, row[0]),
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return self.get(row[0])

    def heartbeat(self, job_id: int, lease_seconds: float) -> None:
        self.db.execute("UPDATE jobs SET lease_until = ? WHERE id = ? AND state = 'running'", (time.time() + lease_seconds, job_id))

    def finish(self, job_id: int, ok: bool, error: str | None = None, result: str | None = None, retry: bool = False) -> str:
        """Record the outcome; a failure is queued again only when `retry` (it may go differently)."""
        job = self.get(job_id)
        if ok:
            state = "done"
        else:
            state = "queued" if retry and job.attempts < self.max_attempts else "failed"
        self.db.execute("UPDATE jobs SET state = ?, updated = ?, lease_until = NULL, error = ?, result = ?, not_before = NULL, "
                        "waits = 0 WHERE id = ?", (state, time.time(), error, result, job_id))
        return state

    def postpone(self, job_id: int, error: str | None, backoff: float, max_backoff: float) -> float:
        """Back to the queue without spending the attempt (the registry was unreachable, not the job
        wrong): claimable again after `backoff` * 2^(times postponed in a row), at most `max_backoff`
        seconds; returns that delay."""
        job = self.get(job_id)
        delay = min(backoff * 2 ** min(job.waits or 0, 30), max_backoff)
        now = time.time()
        self.db.execute("UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), waits = waits + 1, updated = ?, "
                        "lease_until = NULL, error = ?, not_before = ? WHERE id = ?", (now, error, now + delay, job_id))
        return delay

    def next_due(self) -> float | None:
        """Seconds until the earliest postponed job may be claimed (None: none is postponed)."""
        row = self.db.execute("SELECT MIN(not_before) FROM jobs WHERE state = 'queued' AND not_before IS NOT NULL").fetchone()
        return None if row[0] is None else max(0.0, row[0] - time.time())

    def requeue_orphans(self, keep: set[int] = frozenset()) -> list[int]:
        """Running jobs whose lease ran out (their daemon or worker died) go back to the queue;
        `keep` are the jobs this daemon runs itself."""
        now = time.time()
        rows = self.db.execute("SELECT id FROM jobs WHERE state = 'running' AND (lease_until IS NULL OR lease_until < ?)", (now,))
        orphans = [job_id for (job_id,) in rows.fetchall() if job_id not in keep]
        for job_id in orphans:
            self.db.execute("UPDATE jobs SET state = 'queued', updated = ?, lease_until = NULL WHERE id = ? AND state = 'running'",
                            (now, job_id))
        return orphans

    def get(self, job_id: int) -> Job:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job(*row)

    def jobs(self) -> list[Job]:
        return [Job(*row) for row in self.db.execute("SELECT * FROM jobs ORDER BY id")]

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())

    def close(self) -> None:
        self.db.close()
