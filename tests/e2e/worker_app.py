"""The App that the e2e tests run under real ``pgqueue worker`` processes (``--app worker_app:app``).

The worker is started with ``cwd=tests/e2e``, so this module is imported as ``worker_app``. Its DSN
comes from ``PGQUEUE_DSN`` like any user's app.

Handlers that record their executions insert one row per attempt into ``test_executions`` (created
by the test, see ``EXECUTIONS_DDL``) *before* doing their work and on their own autocommit
connection, so a run that is killed, released or re-run stays visible: the tests count executions
from that table, independently of what pgqueue wrote about the job.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import warnings
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

import pgqueue

# The DSN is resolved by the worker CLI (``--dsn`` / ``PGQUEUE_DSN``); nothing here connects at import.
app = pgqueue.App()

EXECUTIONS_DDL = """
CREATE TABLE IF NOT EXISTS test_executions (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id     bigint      NOT NULL,
    attempt    integer     NOT NULL,
    pid        integer     NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

_pool: ConnectionPool[Any] | None = None
_pool_lock = threading.Lock()


def _get_pool() -> ConnectionPool[Any]:
    global _pool
    with _pool_lock:
        if _pool is None:
            # Small on purpose: every test's workers share one server with the rest of the suite.
            _pool = ConnectionPool(app.dsn, min_size=1, max_size=3, open=True, name="e2e-executions",
                                   kwargs={"autocommit": True, "connect_timeout": 5},
                                   check=ConnectionPool.check_connection)
        return _pool


def record_execution(job: pgqueue.Job) -> None:
    """One row per attempt; retried briefly so a momentary connection failure never fails the job."""
    deadline = time.monotonic() + 30
    while True:
        try:
            with _get_pool().connection(timeout=10) as conn:
                conn.execute("INSERT INTO test_executions (job_id, attempt, pid) VALUES (%s, %s, %s)",
                             [job.id, job.attempt, os.getpid()])
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@app.task(name="noop")
def noop(job: pgqueue.Job, **_payload: Any) -> None:
    """Does nothing (throughput, restart tests); any args are accepted and ignored."""


@app.task(name="record")
def record(job: pgqueue.Job, **_payload: Any) -> None:
    """Records its execution and returns; any args are accepted and ignored."""
    record_execution(job)


@app.task(name="sleep", max_attempts=5)
def sleep(job: pgqueue.Job, seconds: float, later_seconds: float | None = None, **_payload: Any) -> None:
    """Records its execution, then blocks its thread in ``time.sleep``: it ignores shutdown, as a
    real handler stuck in a blocking call would. Attempts after the first sleep ``later_seconds``
    (default: ``seconds``), so a rescued job finishes quickly on its second worker."""
    record_execution(job)
    time.sleep(seconds if job.attempt == 1 or later_seconds is None else later_seconds)


@app.task(name="sleep-transactional", transactional=True)
def sleep_transactional(job: pgqueue.Job, seconds: float) -> None:
    """Records its execution, writes a row in its transaction (``test_executions`` again, with
    attempt -1), then blocks its thread in ``time.sleep``, as :func:`sleep` does."""
    record_execution(job)
    assert job.connection is not None
    job.connection.execute("INSERT INTO test_executions (job_id, attempt, pid) VALUES (%s, -1, %s)",
                           [job.id, os.getpid()])
    time.sleep(seconds)


@app.task(name="careless-warning")
def careless_warning(job: pgqueue.Job, ssn: str) -> None:
    """Warns with the args in the message, as careless handler code would; the job completes."""
    warnings.warn(f"odd ssn {ssn}", UserWarning, stacklevel=1)


@app.task(name="thread-error")
def thread_error(job: pgqueue.Job, ssn: str) -> None:
    """Starts a thread that dies of an uncaught ValueError quoting the args, as careless handler
    code would; the job itself completes."""

    def check() -> None:
        raise ValueError(f"not a valid ssn: {ssn}")

    helper = threading.Thread(target=check, name="ssn-check")
    helper.start()
    helper.join()


def _released(job: pgqueue.Job) -> bool:
    with _get_pool().connection(timeout=10) as conn:
        return conn.execute("SELECT 1 FROM test_executions WHERE job_id = %s AND attempt = 0",
                            [job.id]).fetchone() is not None


def _write_letter(job: pgqueue.Job, patient: str) -> None:
    """Reports progress with a note quoting its args, as handlers do; stays running until the test
    releases it (a ``test_executions`` row with attempt 0), then notes that it finished."""
    job.set_progress(50, note=f"letter for {patient}")
    deadline = time.monotonic() + 60
    while not _released(job):
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job.id} was never released")
        time.sleep(0.05)
    job.set_progress(100, note=f"sent to {patient}")


letter = app.task(name="letter", encrypt=True)(_write_letter)
plain_letter = app.task(name="plain-letter")(_write_letter)


@app.task(name="block-loop")
async def block_loop(job: pgqueue.Job, seconds: float) -> None:
    """Records its execution, then blocks the event loop itself in ``time.sleep``: the common
    mistake of blocking code in an ``async def`` handler (the worker's loop stops until it returns)."""
    record_execution(job)
    time.sleep(seconds)  # noqa: ASYNC251 - the mistake this task exists to make


@app.task(name="async-sleep")
async def async_sleep(job: pgqueue.Job, seconds: float) -> None:
    """Records its execution, then awaits ``asyncio.sleep``: a well-behaved async handler."""
    record_execution(job)
    await asyncio.sleep(seconds)
