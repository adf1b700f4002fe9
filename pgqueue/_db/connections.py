"""Turn whatever connection the application hands us into one psycopg connection.

pgqueue runs its SQL on the caller's own connection, inside the caller's transaction, and never
commits or rolls it back. Accepted: psycopg ``Connection``/``AsyncConnection``, SQLAlchemy
``Session``/``Connection`` and their async twins (engines built on the ``psycopg`` driver).
"""

from __future__ import annotations

import os
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


# --- sessions of pgqueue's own worker that must not hang on a lost network path ---

NETWORK_TIMEOUT_ENV = "PGQUEUE_NETWORK_TIMEOUT_SECONDS"
DEFAULT_NETWORK_TIMEOUT = 30.0


def network_timeout() -> float:
    """Seconds a worker session waits for the server's answer before taking the path for lost.

    ``PGQUEUE_NETWORK_TIMEOUT_SECONDS`` (default 30): far above any of pgqueue's own statements
    (claims, acks, heartbeats, maintenance: milliseconds), so only a silent network trips it.
    """
    raw = os.environ.get(NETWORK_TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_NETWORK_TIMEOUT
    except ValueError:
        raise ConfigurationError(f"{NETWORK_TIMEOUT_ENV}={raw!r} must be a number") from None
    if not value > 0:
        raise ConfigurationError(f"{NETWORK_TIMEOUT_ENV}={raw!r} must be greater than zero")
    return value


def _answer_lost(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
                 bound: float) -> psycopg.OperationalError:
    # The session is mid-protocol in an unknown state: close it (no cancel request, which would
    # wait on the same dead path), so the caller's reconnect logic replaces it.
    conn.pgconn.finish()
    return psycopg.OperationalError(f"no answer from the server within {bound:g}s (network path lost?): "
                                    "session closed")


class BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait for the server is bounded: ``answer_timeout`` seconds,
    by default :func:`network_timeout`.

    Keepalives cannot end a half-open session that has a request in flight (they only probe idle
    connections, and a stalled middlebox answers them), and a blocking wait cannot be cancelled
    from outside: a heartbeat or claim waiting on such a path would wait forever, its worker
    alive but working no more. psycopg's own waits (notifies with a timeout) keep their timeout.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answer_timeout = network_timeout()

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        if timeout is not None:
            return super().wait(gen, interval, timeout)
        try:
            return super().wait(gen, interval, self.answer_timeout)
        except psycopg.errors._WaitTimeout:  # psycopg's own: raised only when our timeout expires
            raise _answer_lost(self, self.answer_timeout) from None


class BoundedAsyncConnection(psycopg.AsyncConnection[Any]):
    """The async twin of :class:`BoundedConnection` (no asyncio cancellation, hence no cancel
    request waiting on the dead path too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answer_timeout = network_timeout()

    # psycopg's own signature, timeout included.
    async def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        if timeout is not None:
            return await super().wait(gen, interval, timeout)
        try:
            return await super().wait(gen, interval, self.answer_timeout)
        except psycopg.errors._WaitTimeout:
            raise _answer_lost(self, self.answer_timeout) from None
