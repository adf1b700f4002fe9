"""The server (``server.sql``): what ``pgqueue health`` diagnoses, what limits a worker's sessions,
and the session itself (its backend, a probe, the database's clock).

``ServerStore`` holds what the CLI reads, ``AsyncServerStore`` what the worker's start-up check and
listener read; a method exists in the flavour its callers need, under the same name in both.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg.rows import dict_row

from pgqueue._db.cursors import async_execute_on, cursor_on, execute_on
from pgqueue._db.errors import translate_errors
from pgqueue._db.queries import load_queries


class ServerQueries(NamedTuple):
    notification_queue_usage: LiteralString
    read_only_state: LiteralString
    long_transactions: LiteralString
    connection_limits: LiteralString
    idle_session_timeout: LiteralString
    backend_pid: LiteralString
    ping_server: LiteralString
    read_clock: LiteralString
    schema_revision: LiteralString
    skip_commit_flush_wait: LiteralString
    set_transaction_settings: LiteralString
    join_job_waiters: LiteralString


SERVER = load_queries(ServerQueries, "server.sql")


class ServerStore:
    """Server diagnostics on one psycopg connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def notification_queue_usage(self) -> float:
        with translate_errors():
            row = execute_on(self.conn, SERVER.notification_queue_usage).fetchone()
        return float(row[0]) if row else 0.0

    def long_transactions(self, max_age: float) -> list[dict[str, Any]]:
        """Transactions open for over ``max_age`` seconds in this database (pid, user, application_name,
        state, age_seconds), oldest first, at most 10; this session's own is never listed."""
        with translate_errors(), cursor_on(self.conn, row_factory=dict_row) as cur:
            cur.execute(SERVER.long_transactions, {"max_age": max_age})
            return cur.fetchall()

    def read_only_reason(self) -> str | None:
        """Why this database takes no writes (None when it does)."""
        with translate_errors():
            row = execute_on(self.conn, SERVER.read_only_state).fetchone()
        if row is None:
            return None
        in_recovery, read_only = row
        if in_recovery:
            return "it is a standby in recovery"
        return "default_transaction_read_only is on" if read_only else None

    def now(self) -> datetime:
        """The database's clock (``now()``: the start of the current transaction)."""
        with translate_errors():
            row = execute_on(self.conn, SERVER.read_clock).fetchone()
        assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
        value: datetime = row[0]
        return value


    def schema_revision(self) -> str | None:
        """The alembic revision the schema is at (None: pgqueue was never migrated here)."""
        with translate_errors():
            try:
                row = execute_on(self.conn, SERVER.schema_revision).fetchone()
            except psycopg.errors.UndefinedTable:
                self.conn.rollback()
                return None
        return str(row[0]) if row else None

    def set_transaction_settings(self, settings: dict[str, str]) -> None:
        """Custom settings (``pgqueue.*``) for the current transaction only."""
        with translate_errors():
            execute_on(self.conn, SERVER.set_transaction_settings,
                              {"names": list(settings), "values": list(settings.values())})


class AsyncServerStore:
    """What a worker reads about its server and session, on one async psycopg connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def connection_limit(self) -> tuple[str, int | None, str]:
        """(login role, most sessions it may hold here or None when unlimited, what sets that limit)."""
        with translate_errors():
            cur = await async_execute_on(self.conn, SERVER.connection_limits)
            row = await cur.fetchone()
        if row is None:
            return "", None, ""
        role, superuser, role_limit, database_limit = row
        limits = [] if superuser else [(n, what) for n, what in ((role_limit, "role"), (database_limit, "database"))
                                       if n >= 0]
        if not limits:
            return role, None, ""
        limit, what = min(limits)
        return role, limit, what

    async def behind_pooler(self) -> bool:
        """Whether a connection pooler (PgBouncer?) sits between this session and PostgreSQL: the
        backend's pid differs from the one the session was given at connection."""
        with translate_errors():
            cur = await async_execute_on(self.conn, SERVER.backend_pid)
            row = await cur.fetchone()
        return row is not None and row[0] != self.conn.info.backend_pid

    async def idle_session_timeout(self) -> float:
        """Seconds after which the server ends this session when idle (0: never)."""
        with translate_errors():
            cur = await async_execute_on(self.conn, SERVER.idle_session_timeout)
            row = await cur.fetchone()
        return float(row[0]) if row else 0.0

    async def skip_commit_flush_wait(self) -> None:
        """This session's commits return before their WAL is flushed (``synchronous_commit=off``):
        only for statements whose loss in a server crash is harmless (the worker's claims)."""
        with translate_errors():
            await async_execute_on(self.conn, SERVER.skip_commit_flush_wait)

    async def ping(self) -> None:
        """One round trip (untranslated errors: the caller takes any for a lost session)."""
        await async_execute_on(self.conn, SERVER.ping_server)
