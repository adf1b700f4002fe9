"""Job outcomes (``results.sql``) for :meth:`pgqueue.App.result`, sync and async, and the async
session that waits on :data:`pgqueue._db.notifications.DONE_CHANNEL`.

The sync wait reuses :func:`pgqueue._db.notifications.done_listener`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pgqueue._db.errors import translate_errors
from pgqueue._db.notifications import DONE_CHANNEL
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
        with translate_errors(), self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(RESULTS.get_outcome, {"id": job_id})
            return _decoded(cur.fetchone())


class AsyncResultStore:
    """The async twin of :class:`ResultStore`."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def get_outcome(self, job_id: int) -> dict[str, Any] | None:
        with translate_errors():
            async with self.conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(RESULTS.get_outcome, {"id": job_id})
                return _decoded(await cur.fetchone())


class AsyncDoneListener:
    """A session of its own that LISTENs on :data:`DONE_CHANNEL` (async twin of ``DoneListener``)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109 - the sync DoneListener.wait's signature
        """Wait until a notification arrives (True) or ``timeout`` seconds pass (False)."""
        with translate_errors():
            async for _ in self.conn.notifies(timeout=max(timeout, 0.0), stop_after=1):
                return True
        return False


@contextlib.asynccontextmanager
async def async_done_listener(dsn: str) -> AsyncIterator[AsyncDoneListener]:
    with translate_errors():
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        with translate_errors():
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(DONE_CHANNEL)))
        yield AsyncDoneListener(conn)
    finally:
        with contextlib.suppress(psycopg.Error):
            await conn.close()


def conninfo_of(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> str:
    """A conninfo string for a new session to the same server, database and role as ``conn``
    (``conn.info.dsn`` leaves the password out, so it is added back)."""
    params = psycopg.conninfo.conninfo_to_dict(conn.info.dsn)
    password = conn.info.password
    if password:
        params["password"] = password
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]
