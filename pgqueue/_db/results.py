"""Job outcomes (``results.sql``) for :meth:`pgqueue.App.result`, sync and async.

The waits use :func:`pgqueue._db.notifications.done_listener` and ``async_done_listener``, which
register the session as a waiter (the acks notify ``pgqueue_done`` only while someone waits).
"""

from __future__ import annotations

import json
from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg.rows import dict_row

from pgqueue._db.cursors import async_cursor_on, cursor_on
from pgqueue._db.errors import translate_errors
from pgqueue._db.queries import load_queries


class ResultQueries(NamedTuple):
    get_outcome: LiteralString


RESULTS = load_queries(ResultQueries, "results.sql")


def _decoded(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is not None:
        for column in ("result", "last_error"):
            if row[column] is not None:
                row[column] = json.loads(row[column])
    return row


class ResultStore:
    """Outcome reads on a psycopg connection (the caller's or a listener's; never committed here)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def get_outcome(self, job_id: int) -> dict[str, Any] | None:
        with translate_errors(), cursor_on(self.conn, row_factory=dict_row) as cur:
            cur.execute(RESULTS.get_outcome, {"id": job_id})
            return _decoded(cur.fetchone())


class AsyncResultStore:
    """The async twin of :class:`ResultStore`."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def get_outcome(self, job_id: int) -> dict[str, Any] | None:
        with translate_errors():
            async with async_cursor_on(self.conn, row_factory=dict_row) as cur:
                await cur.execute(RESULTS.get_outcome, {"id": job_id})
                return _decoded(await cur.fetchone())


def conninfo_of(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> str:
    """A conninfo string for a new session to the same server, database and role as ``conn``
    (``conn.info.dsn`` leaves the password out, so it is added back)."""
    params = psycopg.conninfo.conninfo_to_dict(conn.info.dsn)
    password = conn.info.password
    if password:
        params["password"] = password
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]
