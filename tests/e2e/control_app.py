"""The App that the job-control e2e tests run under real ``pgqueue worker`` processes
(``--app control_app:app``, ``cwd=tests/e2e``): a task behind a circuit breaker whose downstream
the test switches between failing, hanging and working, and handlers that wait to be cancelled.

Handlers record what they do on their own autocommit connections (``CONTROL_DDL``), so the tests
read it from the database whatever happens to the worker.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import psycopg

import pgqueue

app = pgqueue.App()

CONTROL_DDL = """
CREATE TABLE IF NOT EXISTS test_executions (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id     bigint      NOT NULL,
    attempt    integer     NOT NULL,
    pid        integer     NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- What the downstream does now: 'fail', 'hang' (sleep a minute) or 'ok'.
CREATE TABLE IF NOT EXISTS test_downstream (id int PRIMARY KEY DEFAULT 1, mode text NOT NULL);
INSERT INTO test_downstream (mode) VALUES ('fail') ON CONFLICT DO NOTHING;
-- When a handler saw its job cancelled, on the database clock.
CREATE TABLE IF NOT EXISTS test_cancels (job_id bigint PRIMARY KEY, how text NOT NULL,
                                         seen_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS test_ledger (job_id bigint NOT NULL);
"""

BREAKER = pgqueue.CircuitBreaker(failures=5, window=60, cooldown=3)


def _execute(query: str, params: Any = None) -> Any:
    """Run one statement on a connection of its own; its first row, if it returns rows."""
    with psycopg.connect(app.dsn, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(query.encode(), params)
        return cur.fetchone() if cur.description else None


def _record(job: pgqueue.Job) -> None:
    _execute("INSERT INTO test_executions (job_id, attempt, pid) VALUES (%s, %s, %s)",
             [job.id, job.attempt, os.getpid()])


@app.task(name="downstream", max_attempts=1000, backoff=pgqueue.Backoff.fixed(0), circuit_breaker=BREAKER)
def downstream(job: pgqueue.Job) -> str:
    """Calls the switchable downstream."""
    _record(job)
    row = _execute("SELECT mode FROM test_downstream")
    mode = row[0] if row else "fail"
    if mode == "hang":
        time.sleep(60)
    if mode != "ok":
        raise ConnectionError("downstream unavailable")
    return "ok"


@app.task(name="other")
def other(job: pgqueue.Job) -> str:
    """A task with no breaker, on the same queue."""
    _record(job)
    return "ok"


@app.task(name="wait-sync")
def wait_sync(job: pgqueue.Job) -> None:
    """Checks job.cancelled between short steps, for up to a minute."""
    _record(job)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if job.cancelled:
            _execute("INSERT INTO test_cancels (job_id, how) VALUES (%s, 'sync')", [job.id])
            job.raise_if_cancelled()
        time.sleep(0.01)


@app.task(name="wait-async")
async def wait_async(job: pgqueue.Job) -> None:
    """Awaits for a minute; the worker cancels the coroutine."""
    _record(job)
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        await asyncio.to_thread(_execute, "INSERT INTO test_cancels (job_id, how) VALUES (%s, 'async')", [job.id])
        raise


@app.task(name="wait-tx", transactional=True)
def wait_tx(job: pgqueue.Job) -> None:
    """Writes a ledger row in its transaction, then waits to be cancelled."""
    _record(job)
    job.connection.execute("INSERT INTO test_ledger (job_id) VALUES (%s)", [job.id])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if job.cancelled:
            _execute("INSERT INTO test_cancels (job_id, how) VALUES (%s, 'tx')", [job.id])
        job.raise_if_cancelled()
        time.sleep(0.01)
