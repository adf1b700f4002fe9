"""The soak's database side (``soak.sql``): its referee's table and sessions, the chaos loop's
backend terminations, and the queries behind the books. What the figures mean is
``pgqueue._soak``'s business.

The soak's own sessions are not named ``pgqueue-*``: the chaos loop terminates pgqueue's backends,
never the referee's.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg_pool import ConnectionPool

from pgqueue._db.queries import load_queries


class SoakQueries(NamedTuple):
    executions_ddl: LiteralString
    record_execution: LiteralString
    pgqueue_backends: LiteralString
    terminate_backend: LiteralString
    batch_landed: LiteralString
    progress: LiteralString
    states: LiteralString
    enqueued_rows: LiteralString
    cron_jobs: LiteralString
    duplicate_outcomes: LiteralString
    terminal_twice: LiteralString
    duplicate_cron_events: LiteralString
    cron_jobs_without_run: LiteralString
    runs_without_job: LiteralString
    cron_runs: LiteralString
    extra_executions: LiteralString
    completed_without_execution: LiteralString
    rescued_attempts: LiteralString
    audit_gaps: LiteralString


SOAK = load_queries(SoakQueries, "soak.sql")


def connect(dsn: str, name: str, *, autocommit: bool = True, connect_timeout: int | None = None
            ) -> psycopg.Connection[Any]:
    """A session of the soak's own, named ``name`` (the caller closes it)."""
    extra: dict[str, Any] = {} if connect_timeout is None else {"connect_timeout": connect_timeout}
    return psycopg.connect(dsn, autocommit=autocommit, application_name=name, **extra)


def create_executions_table(dsn: str) -> None:
    with connect(dsn, "soak-setup") as conn:
        conn.execute(SOAK.executions_ddl)


class ExecutionLog:
    """Records each execution in ``soak_executions`` from a handler, on a small pool of its own."""

    def __init__(self, dsn: Callable[[], str]) -> None:
        self._dsn = dsn
        self._pool: ConnectionPool[Any] | None = None
        self._lock = threading.Lock()

    def _get_pool(self) -> ConnectionPool[Any]:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(self._dsn(), min_size=1, max_size=3, open=True, name="soak-executions",
                                            kwargs={"autocommit": True, "connect_timeout": 5,
                                                    "application_name": "soak-executions"},
                                            check=ConnectionPool.check_connection)
            return self._pool

    def record(self, job_id: int, attempt: int, pid: int) -> None:
        """One row; retried while the database restarts so the record is never skipped."""
        deadline = time.monotonic() + 60
        while True:
            try:
                with self._get_pool().connection(timeout=10) as conn:
                    conn.execute(SOAK.record_execution, {"job_id": job_id, "attempt": attempt, "pid": pid})
                return
            except (psycopg.OperationalError, psycopg.errors.AdminShutdown):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def terminate_backends(dsn: str, choose: Callable[[list[tuple[int, str]]], Sequence[tuple[int, str]]]) -> int:
    """Terminate the pgqueue backends ``choose`` picks among those of this database (pid, name);
    returns how many were chosen."""
    with connect(dsn, "soak-chaos", connect_timeout=5) as conn:
        backends = [(int(pid), str(name)) for pid, name in conn.execute(SOAK.pgqueue_backends).fetchall()]
        if not backends:
            return 0
        chosen = choose(backends)
        for pid, _name in chosen:
            conn.execute(SOAK.terminate_backend, {"pid": pid})
    return len(chosen)


class EnqueuerSession:
    """The enqueuer's connection (one transaction per batch), reopened after a failure."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None

    def connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn, "soak-enqueuer", autocommit=False, connect_timeout=5)
        return self._conn

    def batch_landed(self, tasks: Sequence[str], n: int) -> bool:
        """Whether the batch starting at job number ``n`` committed (a batch lands whole or not at all)."""
        row = self.connection().execute(SOAK.batch_landed, {"tasks": list(tasks), "n": n}).fetchone()
        self.connection().rollback()
        return row is not None and row[0] > 0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Referee:
    """The referee's session: progress while the soak runs, reconnected when the database restarts."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn = connect(dsn, "soak-referee")

    def progress(self) -> tuple[int, int] | None:
        """(jobs in a terminal state, jobs still open), or None while the database is unreachable."""
        try:
            if self.conn.closed:
                self.conn = connect(self.dsn, "soak-referee", connect_timeout=3)
            row = self.conn.execute(SOAK.progress).fetchone()
            return (int(row[0]), int(row[1])) if row else None
        except psycopg.Error:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
            return None

    def close(self) -> None:
        self.conn.close()


@contextlib.contextmanager
def referee(dsn: str) -> Iterator[Referee]:
    session = Referee(dsn)
    try:
        yield session
    finally:
        session.close()


class Books:
    """The books' queries, on the referee's connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def _count(self, query: LiteralString, params: dict[str, Any] | None = None) -> int:
        row = self.conn.execute(query, params).fetchone()
        return int(row[0]) if row is not None and row[0] is not None else 0

    def states(self) -> dict[str, int]:
        return {str(state): int(n) for state, n in self.conn.execute(SOAK.states).fetchall()}

    def enqueued_rows(self, tasks: Sequence[str]) -> tuple[int, int]:
        """(rows of ``tasks``, distinct job numbers among them)."""
        row = self.conn.execute(SOAK.enqueued_rows, {"tasks": list(tasks)}).fetchone()
        return (int(row[0]), int(row[1])) if row is not None else (0, 0)

    def cron_jobs(self, task: str) -> int:
        return self._count(SOAK.cron_jobs, {"task": task})

    def duplicate_outcomes(self) -> int:
        return self._count(SOAK.duplicate_outcomes)

    def terminal_twice(self) -> int:
        return self._count(SOAK.terminal_twice)

    def duplicate_cron_runs(self, task: str) -> int:
        """Two jobs for one (schedule, fire time), seen from the audit rows and from schedule_runs."""
        return (self._count(SOAK.duplicate_cron_events) + self._count(SOAK.cron_jobs_without_run, {"task": task})
                + self._count(SOAK.runs_without_job))

    def cron_runs(self, schedule: str) -> int:
        return self._count(SOAK.cron_runs, {"schedule": schedule})

    def extra_executions(self) -> list[tuple[int, int, list[int]]]:
        """(job id, executions beyond its outcomes, pids of all its executions) of re-executed jobs."""
        return [(int(job_id), int(extra), list(pids))
                for job_id, extra, pids in self.conn.execute(SOAK.extra_executions).fetchall()]

    def completed_without_execution(self) -> int:
        return self._count(SOAK.completed_without_execution)

    def rescued_attempts(self) -> int:
        return self._count(SOAK.rescued_attempts)

    def audit_gaps(self) -> tuple[int, int]:
        """(jobs without an 'enqueued' event, finished jobs without their terminal event)."""
        row = self.conn.execute(SOAK.audit_gaps).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)


@contextlib.contextmanager
def books(dsn: str) -> Iterator[Books]:
    with connect(dsn, "soak-referee") as conn:
        yield Books(conn)
