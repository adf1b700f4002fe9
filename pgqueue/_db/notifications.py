"""Wake-ups: the channel every statement that makes jobs claimable NOTIFYs (the payload is the
queue's name), and the session a worker LISTENs on.

NOTIFY is an accelerator, never the only way a job is found: a worker that misses one still
finds the job by polling.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg import sql

from pgqueue._db.server import AsyncServerStore
from pgqueue._db.sessions import BoundedAsyncConnection, session_options

#: The one channel name; every ``.sql`` file takes it as ``%(channel)s``.
NOTIFY_CHANNEL = "pgqueue_jobs"


class ListenSession:
    """A session of its own that LISTENs on :data:`NOTIFY_CHANNEL` (``pgqueue-listen``).

    Every wait for an answer is bounded by ``answer_timeout`` seconds, so a probe of a dead path
    fails within that time instead of hanging the listener.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    @classmethod
    async def open(cls, dsn: str, *, answer_timeout: float) -> ListenSession:
        conn = await BoundedAsyncConnection.connect(dsn, autocommit=True, **session_options("listen"))
        conn.answer_timeout = answer_timeout
        return cls(conn)

    async def listen(self) -> None:
        await self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))

    async def idle_session_timeout(self) -> float:
        return await AsyncServerStore(self.conn).idle_session_timeout()

    async def queues_notified(self, seconds: float) -> AsyncIterator[str]:
        """The queue names notified within the next ``seconds``."""
        async for notify in self.conn.notifies(timeout=seconds):
            yield notify.payload

    async def probe(self) -> None:
        """Bounded by the session's ``answer_timeout``, not asyncio cancellation, whose cancel
        request would wait up to 10 s more on the same dead path."""
        await AsyncServerStore(self.conn).ping()

    async def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            await self.conn.close()
