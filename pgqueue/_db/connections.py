"""The application's connections: turn whatever it hands us into one psycopg connection.

pgqueue runs its SQL on the caller's own connection, inside the caller's transaction, and never
commits or rolls it back. Accepted: psycopg ``Connection``/``AsyncConnection``, SQLAlchemy
``Session``/``Connection`` and their async twins (engines built on the ``psycopg`` driver), and
Django's ``connection`` / ``connections[alias]`` (the postgresql backend on psycopg 3).
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


def _django_connection(conn: Any) -> psycopg.Connection[Any] | None:
    """The psycopg connection of a Django database wrapper (``django.db.connection`` is a proxy
    to one), or None if ``conn`` is not one. Django is never imported: a wrapper is recognised by
    what it has. Inside ``transaction.atomic()`` the connection is in Django's transaction (and
    savepoints), so the job commits or rolls back with it; outside, Django runs in autocommit."""
    if not (hasattr(conn, "ensure_connection") and hasattr(conn, "vendor") and hasattr(conn, "alias")):
        return None
    if conn.vendor != "postgresql":
        raise ConfigurationError(f"Django database {conn.alias!r} uses the {conn.vendor!r} backend: pgqueue "
                                 "needs django.db.backends.postgresql")
    conn.ensure_connection()
    raw = conn.connection
    if not isinstance(raw, psycopg.Connection):
        raise ConfigurationError(f"Django database {conn.alias!r} runs on {type(raw).__module__}: pgqueue needs "
                                 "psycopg 3 (pip install 'psycopg[binary]' and uninstall psycopg2)")
    return raw


def sync_connection(conn: Any) -> psycopg.Connection[Any]:
    """The psycopg connection behind ``conn``, with the caller's transaction begun if needed."""
    if isinstance(conn, psycopg.Connection):
        return conn
    if isinstance(conn, psycopg.AsyncConnection):
        raise ConfigurationError("an AsyncConnection needs the async API: use enqueue_async")
    django = _django_connection(conn)
    if django is not None:
        return django
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
        f"cannot enqueue on a {type(conn).__name__}: pass a psycopg Connection, a SQLAlchemy Session/Connection "
        "or a Django connection"
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


# libpq connection parameters a framework's settings may carry (psycopg.connect also takes Python
# objects such as cursor_factory or context, which a conninfo string cannot).
_LIBPQ_PARAMS = frozenset({
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "connect_timeout",
    "client_encoding", "options", "application_name", "sslmode", "sslcert", "sslkey", "sslrootcert",
    "sslcrl", "sslpassword", "target_session_attrs", "service", "keepalives", "keepalives_idle",
    "keepalives_interval", "keepalives_count", "tcp_user_timeout", "gssencmode", "channel_binding",
})


def conninfo_from_params(params: dict[str, Any]) -> str:
    """A libpq conninfo string from psycopg.connect keyword arguments (the libpq ones only)."""
    return psycopg.conninfo.make_conninfo(
        **{key: str(value) for key, value in params.items() if key in _LIBPQ_PARAMS and value not in (None, "")})
