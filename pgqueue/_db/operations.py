"""The admin API's data access: pages of jobs, queue limits and depths, reports, wake-ups, metrics.

Rows come back as dicts; :mod:`pgqueue.admin` turns them into its public records. Database errors
are translated here (``translate_errors``), as everywhere in ``_db``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from importlib import resources
from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg.rows import dict_row

from pgqueue._db.connections import connect
from pgqueue._db.queries import _parse, load_queries
from pgqueue._db.store import translate_errors

# The channel the finishing statements of jobs.sql notify (empty payload, once per statement).
DONE_CHANNEL = "pgqueue_done"


class OperationQueries(NamedTuple):
    list_jobs_page: LiteralString
    get_job_state: LiteralString
    queue_exists: LiteralString
    set_queue_limits: LiteralString
    count_live_workers: LiteralString
    finished_events: LiteralString
    events_horizon: LiteralString
    schema_revision: LiteralString
    set_report_settings: LiteralString


OPERATIONS = load_queries(OperationQueries, "operations.sql")


class ReportQueries(NamedTuple):
    report_queue_lag: LiteralString
    report_throughput: LiteralString
    report_failure_rate: LiteralString
    report_run_times: LiteralString
    report_dead_letters: LiteralString


def _load_reports() -> ReportQueries:
    # One file per report, one block each: the same files as sql/reports/ (for people), checked equal.
    folder = resources.files("pgqueue._db").joinpath("queries", "reports")
    blocks: dict[str, str] = {}
    for name in ReportQueries._fields:
        filename = f"{name.removeprefix('report_')}.sql"
        parsed = _parse(folder.joinpath(filename).read_text(encoding="utf-8"))
        if list(parsed) != [name]:
            raise RuntimeError(f"reports/{filename}: expected one block named {name}, found {sorted(parsed)}")
        blocks.update(parsed)
    return ReportQueries(**blocks)


REPORTS = _load_reports()

# Session settings the reports read (current_setting) for their window and bucket.
REPORT_SETTINGS = ("pgqueue.report_window", "pgqueue.report_bucket")


def _dicts(conn: psycopg.Connection[Any], query: LiteralString, params: Mapping[str, Any] | None = None, *,
           prepare: bool | None = None) -> list[dict[str, Any]]:
    with translate_errors(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params, prepare=prepare)
        return cur.fetchall()


def list_jobs_page(conn: psycopg.Connection[Any], *, before: int, budget: int, limit: int, indexed_state: str | None,
                   state: str | None, queue: str | None, task: str | None, tag: str | None,
                   since: datetime | None) -> tuple[list[dict[str, Any]], int, int | None, datetime | None]:
    """(matching rows, rows scanned, the lowest id scanned, the newest enqueued_at scanned)."""
    rows = _dicts(conn, OPERATIONS.list_jobs_page, {
        "before": before, "budget": budget, "limit": limit, "indexed_state": indexed_state, "state": state,
        "queue": queue, "task": task, "tag": tag, "since": since,
    }, prepare=False)  # custom plans only: a generic plan cannot drop the unused filters
    scanned, lowest, newest = rows[0]["scanned"], rows[0]["lowest_id"], rows[0]["newest_enqueued_at"]
    jobs = [{k: v for k, v in row.items() if k not in ("scanned", "lowest_id", "newest_enqueued_at")}
            for row in rows if row["id"] is not None]
    return jobs, int(scanned), lowest, newest


def job_state(conn: psycopg.Connection[Any], job_id: int) -> str | None:
    with translate_errors():
        row = conn.execute(OPERATIONS.get_job_state, {"id": job_id}).fetchone()
    return row[0] if row else None


def queue_exists(conn: psycopg.Connection[Any], queue: str) -> bool:
    with translate_errors():
        row = conn.execute(OPERATIONS.queue_exists, {"queue": queue}).fetchone()
    return bool(row and row[0])


def set_queue_limits(conn: psycopg.Connection[Any], queue: str, *, concurrency: int | None, set_concurrency: bool,
                     rate: tuple[int, int] | None, set_rate: bool, actor: str | None) -> dict[str, Any]:
    rows = _dicts(conn, OPERATIONS.set_queue_limits, {
        "queue": queue, "concurrency": concurrency, "set_concurrency": set_concurrency,
        "rate_limit": rate[0] if rate else None, "rate_period_seconds": rate[1] if rate else None,
        "set_rate": set_rate, "actor": actor,
    })
    return rows[0]


def live_workers(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(alive, registered) worker processes."""
    with translate_errors():
        row = conn.execute(OPERATIONS.count_live_workers).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def report(conn: psycopg.Connection[Any], query: LiteralString,
           settings: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Run one of :data:`REPORTS` with its optional session settings (window, bucket).

    The settings are transaction-local and reset afterwards, so the caller's transaction is left
    as it was; on an autocommit connection the report runs in a transaction of its own.
    """
    if not settings:
        return _dicts(conn, query)
    unknown = set(settings) - set(REPORT_SETTINGS)
    if unknown:
        raise ValueError(f"unknown report settings {sorted(unknown)}")
    with translate_errors():
        if conn.autocommit:
            with conn.transaction():
                return _report_with(conn, query, settings)
        return _report_with(conn, query, settings)


def _report_with(conn: psycopg.Connection[Any], query: LiteralString, settings: Mapping[str, str]) -> list[
        dict[str, Any]]:
    names, values = list(settings), list(settings.values())
    conn.execute(OPERATIONS.set_report_settings, {"names": names, "values": values})
    rows = _dicts(conn, query)
    conn.execute(OPERATIONS.set_report_settings, {"names": names, "values": [""] * len(names)})
    return rows


def events_horizon(conn: psycopg.Connection[Any]) -> int:
    with translate_errors():
        row = conn.execute(OPERATIONS.events_horizon).fetchone()
    return int(row[0]) if row else 0


def finished_events(conn: psycopg.Connection[Any], xid_from: int,
                    bounds: Sequence[float]) -> tuple[int, list[dict[str, Any]]]:
    """(the new horizon, outcome counts since ``xid_from`` per event, queue, task and run-time bucket)."""
    rows = _dicts(conn, OPERATIONS.finished_events, {"xid_from": str(xid_from), "bounds": list(bounds)})
    horizon = int(rows[0]["horizon"]) if rows else xid_from
    return horizon, [row for row in rows if row["event"] is not None]


def schema_revision(conn: psycopg.Connection[Any]) -> str | None:
    with translate_errors():
        try:
            row = conn.execute(OPERATIONS.schema_revision).fetchone()
        except psycopg.errors.UndefinedTable:
            conn.rollback()
            return None
    return str(row[0]) if row else None


# --- wake-ups for wait_for_job ---


def listener_dsn(conn: psycopg.Connection[Any]) -> str:
    """A conninfo string for a new session to the same server, database and role as ``conn``.

    ``conn.info.dsn`` leaves the password out (psycopg hides it), so it is added back.
    """
    params = psycopg.conninfo.conninfo_to_dict(conn.info.dsn)
    password = conn.info.password
    if password:
        params["password"] = password
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


class DoneListener:
    """A session of its own that LISTENs on :data:`DONE_CHANNEL`, for :func:`pgqueue.admin.wait_for_job`."""

    def __init__(self, dsn: str) -> None:
        self.conn = connect(dsn, autocommit=True)
        with translate_errors():
            self.conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(DONE_CHANNEL)))

    def wait(self, timeout: float) -> bool:
        """Block until a notification arrives (True) or ``timeout`` seconds pass (False)."""
        with translate_errors():
            for _ in self.conn.notifies(timeout=max(timeout, 0.0), stop_after=1):
                return True
        return False

    def close(self) -> None:
        self.conn.close()


@contextmanager
def done_listener(dsn: str) -> Iterator[DoneListener]:
    listener = DoneListener(dsn)
    try:
        yield listener
    finally:
        listener.close()


def own_connection(dsn: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """A connection of pgqueue's own (the dashboard's, a listener's): :func:`connect`, re-exported
    so callers outside ``_db`` never name psycopg."""
    return connect(dsn, autocommit=autocommit)


class ConnectionPool:
    """A small pool of pgqueue's own connections (the dashboard's), opened on first use.

    On first use rather than only by an ASGI lifespan: Starlette does not run a mounted app's
    lifespan, and a pool closed by one lifespan (a test client's) opens again for the next.
    ``connection()`` yields a connection whose transaction commits when the block succeeds and
    rolls back when it raises.
    """

    def __init__(self, dsn: str, *, max_size: int = 4) -> None:
        from pgqueue.settings import normalize_dsn

        self._conninfo = normalize_dsn(dsn)
        self._max_size = max_size
        self._pool: Any = None
        self._lock = threading.Lock()

    def open(self) -> Any:
        from psycopg_pool import ConnectionPool as _Pool

        with self._lock:
            if self._pool is None or self._pool.closed:
                self._pool = _Pool(self._conninfo, min_size=1, max_size=self._max_size, open=False, timeout=10.0,
                                   kwargs={"connect_timeout": 10})
                self._pool.open(wait=False)
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        from psycopg_pool import PoolTimeout

        pool = self._pool if self._pool is not None and not self._pool.closed else self.open()
        try:
            with translate_errors(), pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            from pgqueue.errors import DatabaseUnavailable

            raise DatabaseUnavailable("database unavailable: no connection could be made within 10s") from exc
