"""The application's connections: turn whatever it hands us into one psycopg connection.

pgqueue runs its SQL on the caller's own connection, inside the caller's transaction, and never
commits or rolls it back. Accepted: psycopg ``Connection``/``AsyncConnection``, SQLAlchemy
``Session``/``Connection`` and their async twins (engines built on the ``psycopg`` driver).
"""

from __future__ import annotations

from typing import Any

import psycopg

from pgqueue.errors import ConfigurationError


def _driver_connection(raw: Any) -> Any:
    driver = getattr(raw, "driver_connection", None)
    return driver if driver is not None else raw


def _check_sqlalchemy_driver(sa_conn: Any) -> None:
    driver = getattr(getattr(sa_conn, "dialect", None), "driver", None)
    if driver not in {"psycopg", "psycopg_async"}:
        raise ConfigurationError(
            f"SQLAlchemy driver {driver!r} is not supported: use a 'postgresql+psycopg://' engine URL"
        )


def sync_connection(conn: Any) -> psycopg.Connection[Any]:
    """The psycopg connection behind ``conn``, with the caller's transaction begun if needed."""
    if isinstance(conn, psycopg.Connection):
        return conn
    if isinstance(conn, psycopg.AsyncConnection):
        raise ConfigurationError("an AsyncConnection needs the async API: use enqueue_async")
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    if isinstance(conn, AsyncSession | SAAsyncConnection):
        raise ConfigurationError(f"a SQLAlchemy {type(conn).__name__} needs the async API: use enqueue_async")
    if isinstance(conn, Session):
        conn = conn.connection()  # begins the session's transaction, so its commit covers our INSERT
    if isinstance(conn, SAConnection):
        _check_sqlalchemy_driver(conn)
        if not conn.in_transaction():
            # Without this SQLAlchemy would not know a transaction is open, and its commit()
            # would be a no-op that silently drops the job.
            conn.begin()
        driver = _driver_connection(conn.connection.dbapi_connection)
        if isinstance(driver, psycopg.Connection):
            return driver
    raise ConfigurationError(
        f"cannot enqueue on a {type(conn).__name__}: pass a psycopg Connection or a SQLAlchemy Session/Connection"
    )


async def async_connection(conn: Any) -> psycopg.AsyncConnection[Any]:
    """Async twin of :func:`sync_connection`."""
    if isinstance(conn, psycopg.AsyncConnection):
        return conn
    if isinstance(conn, psycopg.Connection):
        raise ConfigurationError("a sync Connection needs the sync API: use enqueue")
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
    from sqlalchemy.ext.asyncio import AsyncSession

    if isinstance(conn, AsyncSession):
        conn = await conn.connection()
    if isinstance(conn, SAAsyncConnection):
        _check_sqlalchemy_driver(conn.sync_connection)
        if not conn.in_transaction():
            await conn.begin()
        raw = await conn.get_raw_connection()
        driver = _driver_connection(raw)
        if isinstance(driver, psycopg.AsyncConnection):
            return driver
    raise ConfigurationError(
        f"cannot enqueue on a {type(conn).__name__}: pass a psycopg AsyncConnection or a SQLAlchemy "
        "AsyncSession/AsyncConnection"
    )
