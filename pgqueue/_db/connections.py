"""Turn whatever connection the application hands us into one psycopg connection.

pgqueue runs its SQL on the caller's own connection, inside the caller's transaction, and never
commits or rolls it back. Accepted: psycopg ``Connection``/``AsyncConnection``, SQLAlchemy
``Session``/``Connection`` and their async twins (engines built on the ``psycopg`` driver).
"""

from __future__ import annotations

from typing import Any

import psycopg

from pgqueue.errors import ConfigurationError, DatabaseUnavailable, InvalidDSN


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


# Used when neither the DSN nor PGCONNECT_TIMEOUT sets one: an operator's command against an
# unreachable host should fail within seconds, not hang on the OS's TCP timeout.
DEFAULT_CONNECT_TIMEOUT = 10


def _password_of(conninfo: str) -> str | None:
    try:
        return psycopg.conninfo.conninfo_to_dict(conninfo).get("password")  # type: ignore[return-value]
    except psycopg.Error:
        from urllib.parse import urlsplit

        try:
            return urlsplit(conninfo).password if "://" in conninfo else None
        except ValueError:
            return None


def _reason(exc: BaseException, password: str | None) -> str:
    lines = str(exc).strip().splitlines()
    reason = lines[0].strip() if lines else type(exc).__name__
    return reason.replace(password, "***") if password else reason


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """Open a connection of pgqueue's own (CLI, maintenance), not one the application lends us.

    The caller closes it (``with connect(dsn) as conn:`` commits on success, rolls back on error).

    Raises:
        InvalidDSN: ``dsn`` is not a PostgreSQL address psycopg can parse.
        DatabaseUnavailable: the server cannot be reached or refused us. The message shows the DSN
            without its password.
    """
    import os

    from pgqueue.settings import normalize_dsn, redact_dsn

    conninfo = normalize_dsn(dsn)
    password = _password_of(conninfo)
    shown = redact_dsn(conninfo)
    if password and password in shown:  # a form redact_dsn does not know; never echo the secret
        shown = shown.replace(password, "***")
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise InvalidDSN(f"{shown} is not a valid PostgreSQL DSN: {_reason(exc, password)}") from None
    extra: dict[str, Any] = {}
    if "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT"):
        extra["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
    try:
        return psycopg.connect(conninfo, autocommit=autocommit, **extra)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to {shown}: {_reason(exc, password)}") from None
    except psycopg.Error as exc:
        raise InvalidDSN(f"{shown}: {_reason(exc, password)}") from None
