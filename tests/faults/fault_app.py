"""The Apps the fault tests run under real ``pgqueue worker`` processes
(``--app tests.faults.fault_app:app``, started with ``cwd`` at the repository root).

``app`` has every task, including a transactional one (so its workers may open a pool);
``plain_app`` has only the plain tasks, for tests that count a worker's own connections.

The worker's database comes from ``PGQUEUE_DSN`` like any user's app. Executions are recorded in
``fault_executions`` (created by the test, see ``EXECUTIONS_DDL``) through ``FAULT_RECORD_DSN``: the
test sets it to a superuser DSN, so that the connections the test counts and restricts (a role's
connection limit, its timeouts) are pgqueue's own, not the test app's bookkeeping.

Rows are written *before* the handler returns and on their own autocommit connection, so every
attempt stays visible whatever pgqueue later writes about the job.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

import pgqueue

app = pgqueue.App()
plain_app = pgqueue.App()

EXECUTIONS_DDL = """
CREATE TABLE IF NOT EXISTS fault_executions (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id     bigint      NOT NULL,
    attempt    integer     NOT NULL,
    pid        integer     NOT NULL,
    kind       text        NOT NULL,
    at         timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

_pool: ConnectionPool[Any] | None = None
_pool_lock = threading.Lock()


def _get_pool() -> ConnectionPool[Any]:
    global _pool
    with _pool_lock:
        if _pool is None:
            # Small: every test's workers share one server with the rest of the suite. check= makes
            # the pool replace connections the server closed while they sat idle, and the option keeps
            # the bookkeeping writable while a test turns the server read-only under the worker.
            _pool = ConnectionPool(os.environ.get("FAULT_RECORD_DSN") or app.dsn, min_size=0, max_size=2,
                                   open=True, name="fault-executions",
                                   kwargs={"autocommit": True, "connect_timeout": 5,
                                           "options": "-c default_transaction_read_only=off"},
                                   check=ConnectionPool.check_connection)
        return _pool


def record_execution(job: pgqueue.Job, kind: str) -> None:
    """One row per attempt, retried while the database is briefly unreachable."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with _get_pool().connection(timeout=10) as conn:
                conn.execute("INSERT INTO fault_executions (job_id, attempt, pid, kind) VALUES (%s, %s, %s, %s)",
                             [job.id, job.attempt, os.getpid(), kind])
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def noop(job: pgqueue.Job, **_payload: Any) -> None:
    """Does nothing; any args are accepted and ignored."""


def record(job: pgqueue.Job, seconds: float = 0.0, **_payload: Any) -> None:
    """Records its execution, then sleeps ``seconds`` (a job that holds a slot for a while)."""
    record_execution(job, "record")
    if seconds:
        time.sleep(seconds)


for _app in (app, plain_app):
    _app.task(name="noop")(noop)
    _app.task(name="record")(record)


@app.task(name="tx-record", transactional=True)
def tx_record(job: pgqueue.Job, **_payload: Any) -> None:
    """Writes its execution on ``job.connection``: the row commits with the job's completion, so
    exactly one row per completed job, whatever happened to earlier attempts."""
    assert job.connection is not None
    job.connection.execute(
        "INSERT INTO fault_executions (job_id, attempt, pid, kind) VALUES (%s, %s, %s, 'tx')",
        [job.id, job.attempt, os.getpid()])
