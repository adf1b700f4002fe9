"""Wake-ups: the channel every statement that makes jobs claimable NOTIFYs (the payload is the
queue's name), and the session a worker LISTENs on.

NOTIFY is an accelerator, never the only way a job is found: a worker that misses one still
finds the job by polling.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
from psycopg import sql

from pgqueue._db.cursors import async_execute_on, execute_on
from pgqueue._db.errors import translate_errors
from pgqueue._db.server import SERVER, AsyncServerStore
from pgqueue._db.sessions import BoundedAsyncConnection, connect, session_options

#: The one channel name; every ``.sql`` file takes it as ``%(channel)s``.
NOTIFY_CHANNEL = "pgqueue_jobs"
#: The channel the statements that finish jobs notify (empty payload, once per statement): what
#: ``pgqueue.admin.wait_for_job`` listens on, re-reading its job by primary key when woken.
DONE_CHANNEL = "pgqueue_done"
#: The channel ``cancel_job`` notifies when it cancels a running job (payload ``<id>:<lease token>``):
#: workers LISTEN on it beside :data:`NOTIFY_CHANNEL` to interrupt the handler at once.
CANCEL_CHANNEL = "pgqueue_cancel"
#: Changes to queue and task limits (sql/schema.sql: pgqueue.announce_limits), payload empty: a
#: listening worker reads its limited queues and tasks again before its next claim.
LIMITS_CHANNEL = "pgqueue_limits"
#: The advisory lock (one bigint key: the bytes of "pgqwait!") every waiter holds in shared mode.
#:
#: A NOTIFY is not free: at commit it takes a cluster-wide lock, writes the notification queue and
#: signals every LISTENing backend of the database (each worker's listener too). So the worker's ack
#: statements notify only while someone waits: they ``pg_try_advisory_xact_lock`` this key, which
#: fails while a waiter holds it shared (notify), and otherwise holds it until their commit (no
#: notify). A waiter takes it shared, LISTENs, then reads its job: if an ack's try came first, the
#: waiter's lock waits for that ack's commit and the read sees its outcome; if the waiter came
#: first, the ack notifies. Either way no wake-up is lost (the poll fallback stays as a backstop).
WAITERS_LOCK_KEY = int.from_bytes(b"pgqwait!", "big")


def _lock_timeout_ms(seconds: float) -> int:
    # 0 would mean "no timeout" to PostgreSQL: at least one millisecond.
    return max(1, int(seconds * 1000))


class ListenSession:
    """A session of its own that LISTENs on :data:`NOTIFY_CHANNEL` and :data:`CANCEL_CHANNEL`
    (``pgqueue-listen``).

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
        await async_execute_on(self.conn, sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
        await async_execute_on(self.conn, sql.SQL("LISTEN {}").format(sql.Identifier(CANCEL_CHANNEL)))
        await async_execute_on(self.conn, sql.SQL("LISTEN {}").format(sql.Identifier(LIMITS_CHANNEL)))

    async def idle_session_timeout(self) -> float:
        return await AsyncServerStore(self.conn).idle_session_timeout()

    async def queues_notified(self, seconds: float) -> AsyncIterator[str]:
        """The queue names notified within the next ``seconds`` (cancellations left out)."""
        async for channel, payload in self.notified(seconds):
            if channel == NOTIFY_CHANNEL:
                yield payload

    async def notified(self, seconds: float) -> AsyncIterator[tuple[str, str]]:
        """(channel, payload) of each notification within the next ``seconds``."""
        async for notify in self.conn.notifies(timeout=seconds):
            yield notify.channel, notify.payload

    async def probe(self) -> None:
        """Bounded by the session's ``answer_timeout``, not asyncio cancellation, whose cancel
        request would wait up to 10 s more on the same dead path."""
        await AsyncServerStore(self.conn).ping()

    async def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            await self.conn.close()


# --- finished jobs, for pgqueue.admin.wait_for_job ---


def listener_dsn(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> str:
    """A conninfo string for a new session to the same server, database and role as ``conn``.

    ``conn.info.dsn`` leaves the password out (psycopg hides it), so it is added back.
    """
    params = psycopg.conninfo.conninfo_to_dict(conn.info.dsn)
    password = conn.info.password
    if password:
        params["password"] = password
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


class DoneListener:
    """A session of its own that LISTENs on :data:`DONE_CHANNEL`, as a registered waiter."""

    def __init__(self, dsn: str) -> None:
        self.conn = connect(dsn, autocommit=True)
        with translate_errors():
            execute_on(self.conn, sql.SQL("LISTEN {}").format(sql.Identifier(DONE_CHANNEL)))

    def join(self, seconds: float) -> bool:
        """Become a waiter (see :data:`WAITERS_LOCK_KEY`); False if that took over ``seconds``."""
        with translate_errors():
            try:
                execute_on(self.conn, SERVER.join_job_waiters,
                                  {"key": WAITERS_LOCK_KEY, "lock_timeout_ms": _lock_timeout_ms(seconds)})
            except psycopg.errors.LockNotAvailable:
                return False
        return True

    def wait(self, timeout: float) -> bool:
        """Block until a notification arrives (True) or ``timeout`` seconds pass (False)."""
        with translate_errors():
            for _ in self.conn.notifies(timeout=max(timeout, 0.0), stop_after=1):
                return True
        return False

    def close(self) -> None:
        self.conn.close()


@contextlib.contextmanager
def done_listener(dsn: str) -> Iterator[DoneListener]:
    listener = DoneListener(dsn)
    try:
        yield listener
    finally:
        listener.close()


class AsyncDoneListener:
    """The asyncio twin of :class:`DoneListener` (``pgqueue.admin.wait_for_job_async``)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def join(self, seconds: float) -> bool:
        """Become a waiter (see :data:`WAITERS_LOCK_KEY`); False if that took over ``seconds``."""
        with translate_errors():
            try:
                await async_execute_on(self.conn, SERVER.join_job_waiters,
                                        {"key": WAITERS_LOCK_KEY, "lock_timeout_ms": _lock_timeout_ms(seconds)})
            except psycopg.errors.LockNotAvailable:
                return False
        return True

    @classmethod
    async def open(cls, dsn: str) -> AsyncDoneListener:
        from pgqueue.settings import normalize_dsn  # as connect() does for the sync listener

        with translate_errors():
            conn = await psycopg.AsyncConnection.connect(normalize_dsn(dsn), autocommit=True)
            try:
                await async_execute_on(conn, sql.SQL("LISTEN {}").format(sql.Identifier(DONE_CHANNEL)))
            except BaseException:
                await conn.close()
                raise
        return cls(conn)

    async def wait(self, seconds: float) -> bool:
        """Wait until a notification arrives (True) or ``seconds`` pass (False)."""
        with translate_errors():
            async for _ in self.conn.notifies(timeout=max(seconds, 0.0), stop_after=1):
                return True
        return False

    async def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            await self.conn.close()


@contextlib.asynccontextmanager
async def async_done_listener(dsn: str) -> AsyncIterator[AsyncDoneListener]:
    listener = await AsyncDoneListener.open(dsn)
    try:
        yield listener
    finally:
        await listener.close()
