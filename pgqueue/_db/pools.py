"""Pooled sessions: for transactional handlers (a handler's writes and its job's completion commit
in one transaction on one of these connections) and for the dashboard.

Each pool is opened on first use; a transactional pool is sized by the worker, and every
connection is pinged before a handler gets it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from pgqueue._db.errors import translate_errors
from pgqueue._db.sessions import session_options, tolerate_unreadable_timestamps
from pgqueue.errors import DatabaseUnavailable
from pgqueue.settings import normalize_dsn


class TransactionPool:
    """Sync handlers' pool (handlers run in threads; open it on the event loop's thread)."""

    def __init__(self, dsn: str, *, max_size: int, prepare: bool) -> None:
        self.pool: ConnectionPool[Any] = ConnectionPool(
            dsn, min_size=0, max_size=max_size, open=True, kwargs=session_options(prepare=prepare), name="pgqueue-tx")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A live pooled connection, inside a transaction committed when the block succeeds."""
        with _live_connection(self.pool) as conn, conn.transaction():
            yield conn

    def close(self, seconds: float) -> None:
        self.pool.close(seconds)


class AsyncTransactionPool:
    """The async twin of :class:`TransactionPool`, for ``async def`` transactional handlers."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, dsn: str, *, max_size: int, prepare: bool) -> AsyncTransactionPool:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn, min_size=0, max_size=max_size, open=False, kwargs=session_options(prepare=prepare),
            name="pgqueue-async-tx")
        await pool.open()
        return cls(pool)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with _live_async_connection(self.pool) as conn, conn.transaction():
            yield conn

    async def close(self, seconds: float) -> None:
        await self.pool.close(seconds)


# A pooled session may have been ended by the server while it sat idle (a role's
# idle_session_timeout, a restart); a handler given one would fail its attempt on its first
# statement. So each is pinged and dead ones are dropped (the pool replaces them) before a handler
# gets a connection. Not psycopg_pool's check=: it sleeps about a second between failed checks,
# longer than an aggressive idle_session_timeout, so each replacement died idle before its turn.
@contextlib.contextmanager
def _live_connection(pool: ConnectionPool[Any]) -> Iterator[psycopg.Connection[Any]]:
    conn = pool.getconn()
    for _ in range(pool.max_size):
        try:
            pool.check_connection(conn)
            break
        except psycopg.Error:
            pool.putconn(conn)
            conn = pool.getconn()
    try:
        yield conn
    finally:
        pool.putconn(conn)


@contextlib.asynccontextmanager
async def _live_async_connection(pool: AsyncConnectionPool[Any]) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    conn = await pool.getconn()
    for _ in range(pool.max_size):
        try:
            await pool.check_connection(conn)
            break
        except psycopg.Error:
            await pool.putconn(conn)
            conn = await pool.getconn()
    try:
        yield conn
    finally:
        await pool.putconn(conn)


#: How long a dashboard request waits for a pooled connection while the database answers.
CONNECTION_WAIT_SECONDS = 10.0
#: How long a dashboard request waits for a pooled connection before it checks, with one direct
#: connection attempt, whether the database answers at all (see DashboardPool.connection).
PROBE_AFTER_SECONDS = 1.0
PROBE_CONNECT_TIMEOUT_SECONDS = 2


class DashboardPool:
    """A small pool of the dashboard's connections, opened on first use.

    On first use rather than only by an ASGI lifespan: Starlette does not run a mounted app's
    lifespan, and a pool closed by one lifespan (a test client's) opens again for the next.
    ``connection()`` yields a connection whose transaction commits when the block succeeds and
    rolls back when it raises.
    """

    def __init__(self, dsn: str, *, max_size: int = 4) -> None:
        self._conninfo = normalize_dsn(dsn)
        self._max_size = max_size
        self._pool: ConnectionPool[Any] | None = None
        self._lock = threading.Lock()
        # One direct probe at a time, its verdict shared: requests that wait on a busy pool together
        # must not each open a connection of their own to the database the pool is short of.
        self._probe_lock = threading.Lock()
        self._probed: tuple[float, bool] | None = None  # (time.monotonic(), reachable)

    def open(self) -> ConnectionPool[Any]:
        with self._lock:
            if self._pool is None or self._pool.closed:
                self._pool = ConnectionPool(self._conninfo, min_size=1, max_size=self._max_size, open=False,
                                            timeout=10.0, kwargs={"connect_timeout": 10},
                                            configure=tolerate_unreadable_timestamps)
                self._pool.open(wait=False)
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()

    @contextlib.contextmanager
    def connection(self, timeout: float = CONNECTION_WAIT_SECONDS) -> Iterator[psycopg.Connection[Any]]:
        """A connection within ``timeout`` seconds, else :class:`DatabaseUnavailable`.

        A pool that has no connection to give within :data:`PROBE_AFTER_SECONDS` is either busy or
        cut off from its database, which its statistics do not tell apart: one direct connection
        attempt does. A database that refuses it fails the request then, not after ``timeout``:
        otherwise, while the database is down, every dashboard and API request held a server thread
        for the whole wait before its 503, and the polling dashboard's requests piled up.
        """
        pool = self._pool if self._pool is not None and not self._pool.closed else self.open()
        first_wait = min(timeout, PROBE_AFTER_SECONDS)
        # translate_errors outermost: a failed commit when the block ends is an outage too.
        with translate_errors(), contextlib.ExitStack() as held:
            try:
                conn = held.enter_context(pool.connection(timeout=first_wait))
            except PoolTimeout as exc:
                if first_wait >= timeout or not self._reachable():
                    raise DatabaseUnavailable(
                        f"database unavailable: no connection could be made within {first_wait:g}s") from exc
                conn = held.enter_context(pool.connection(timeout=timeout - first_wait))
            yield conn

    def _reachable(self) -> bool:
        """Whether the database takes a direct connection; a verdict younger than
        PROBE_AFTER_SECONDS is reused, and requests arriving during a probe wait for its verdict."""
        with self._probe_lock:
            if self._probed is not None and time.monotonic() - self._probed[0] < PROBE_AFTER_SECONDS:
                return self._probed[1]
            reachable = self._connect_directly()
            self._probed = (time.monotonic(), reachable)
            return reachable

    def _connect_directly(self) -> bool:
        try:
            psycopg.connect(self._conninfo, connect_timeout=PROBE_CONNECT_TIMEOUT_SECONDS).close()
        except psycopg.Error:
            return False
        return True
