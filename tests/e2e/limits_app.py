"""The App of the flow-limit tests (``--app limits_app:app``, ``cwd=tests/e2e``).

Handlers record their run in ``test_spans`` (``SPANS_DDL``, created by the test) on their own
autocommit connection: the handler's start and end by the database clock, so a test can tell
whether two runs overlapped, independently of what pgqueue wrote about the jobs.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from psycopg_pool import ConnectionPool

import pgqueue

app = pgqueue.App()

SPANS_DDL = """
CREATE TABLE IF NOT EXISTS test_spans (
    job_id  bigint      PRIMARY KEY,
    task    text        NOT NULL,
    queue   text        NOT NULL,
    grp     text,
    pid     integer     NOT NULL,
    started timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended   timestamptz
)
"""

_pool: ConnectionPool[Any] | None = None
_pool_lock = threading.Lock()


def _get_pool() -> ConnectionPool[Any]:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ConnectionPool(app.dsn, min_size=1, max_size=4, open=True, name="limits-spans",
                                   kwargs={"autocommit": True, "connect_timeout": 5})
        return _pool


def span(job: pgqueue.Job, seconds: float, grp: str | None = None) -> None:
    with _get_pool().connection(timeout=30) as conn:
        conn.execute("INSERT INTO test_spans (job_id, task, queue, grp, pid) VALUES (%s, %s, %s, %s, %s)"
                     " ON CONFLICT (job_id) DO UPDATE SET started = clock_timestamp(), ended = NULL",
                     [job.id, job.task, job.queue, grp, os.getpid()])
    time.sleep(seconds)
    with _get_pool().connection(timeout=30) as conn:
        conn.execute("UPDATE test_spans SET ended = clock_timestamp() WHERE job_id = %s", [job.id])


@app.task(name="span", max_attempts=5)
def plain(job: pgqueue.Job, seconds: float = 0.0, later_seconds: float | None = None) -> None:
    """No limit of its own: the queue's limits (set by the test) apply. Attempts after the first
    sleep ``later_seconds`` (default ``seconds``), so a rescued job finishes soon on its next worker."""
    span(job, seconds if job.attempt == 1 or later_seconds is None else later_seconds)


@app.task(name="noop")
def noop(job: pgqueue.Job) -> None:
    """Nothing; the claim's started_at is what rate tests read."""


@app.task(name="task-limited", concurrency=2)
def task_limited(job: pgqueue.Job, seconds: float = 0.0) -> None:
    span(job, seconds)


@app.task(name="task-rated", rate="10/s")
def task_rated(job: pgqueue.Job) -> None:
    """Nothing; at most 10 starts in any second."""


@app.task(name="grouped", group_concurrency=1)
def grouped(job: pgqueue.Job, grp: str, seconds: float = 0.0) -> None:
    span(job, seconds, grp)
