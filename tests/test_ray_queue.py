"""The queue records which executor ran each job and where; a queue from before those columns is
migrated in place (ALTER TABLE ADD COLUMN), its jobs intact."""

from __future__ import annotations

import sqlite3
import threading

from convrepair.daemon.queue import JobQueue

OLD_SCHEMA = """
CREATE TABLE jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  model TEXT NOT NULL, version TEXT NOT NULL, target TEXT NOT NULL, input_sha256 TEXT NOT NULL,
  state TEXT NOT NULL DEFAULT 'queued', attempts INTEGER NOT NULL DEFAULT 0,
  created REAL NOT NULL, updated REAL NOT NULL, lease_until REAL, error TEXT, result TEXT,
  UNIQUE (model, version, target, input_sha256)
);
INSERT INTO jobs (model, version, target, input_sha256, state, attempts, created, updated)
  VALUES ('digits', '1', 'onnx', 'aa', 'done', 1, 1.0, 2.0);
"""


def test_an_old_queue_gains_the_placement_columns_and_keeps_its_jobs(tmp_path):
    path = tmp_path / "queue.sqlite"
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    old.close()
    queue = JobQueue(path)
    [job] = queue.jobs()
    assert (job.model, job.state, job.attempts, job.executor, job.host, job.node) == ("digits", "done", 1, None, None, None)
    new = queue.get(queue.enqueue("digits", "2", "onnx", "bb"))
    queue.placed(new.id, "ray", "node-a", "f00d")
    assert (queue.get(new.id).executor, queue.get(new.id).host, queue.get(new.id).node) == ("ray", "node-a", "f00d")
    queue.placed(new.id, "ray", None, None)  # dispatched again: not placed yet, nothing stale kept
    assert queue.get(new.id).host is None
    queue.close()


def test_two_processes_opening_an_old_queue_at_once_both_work(tmp_path):
    path = tmp_path / "queue.sqlite"
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    old.close()
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            JobQueue(path).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(jobs)")]
    assert columns[-5:] == ["executor", "host", "node", "not_before", "waits"]
