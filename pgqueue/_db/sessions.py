"""pgqueue's own sessions: how they are opened, kept alive, bounded in time and replaced.

The application's connections are :mod:`pgqueue._db.connections`' business; everything here is a
session pgqueue opens itself:

- :func:`connect`: an operator's command (the CLI), failing fast with the DSN shown without its
  password; :func:`open_connection`: ``App.connect``, and its async twin :func:`open_async_connection`.
- :func:`session_options`: the options of every long-lived session (worker, listener, scheduler,
  transactional pools): keepalives, a connect timeout, no server-side prepared statements unless
  asked for, a ``pgqueue-<role>`` application name.
- :class:`BoundedConnection` / :class:`BoundedAsyncConnection`: every wait for an answer ends
  after ``PGQUEUE_NETWORK_TIMEOUT_SECONDS``.
- :class:`ReconnectingSession` / :class:`AsyncReconnectingSession`: one autocommit session that
  is reopened on demand, and replaced at once when it turns out dead on first use.
- :func:`capped_backoff`: how long a loop waits before trying a failed database again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
import psycopg.types.datetime

from pgqueue._db.errors import first_line, translate_errors
from pgqueue.errors import ConfigurationError, DatabaseUnavailable, InvalidDSN, PgqueueError

T = TypeVar("T")

# --- options ---

# Keepalives let a half-open connection (the network vanished without a FIN) fail in about
# 10 + 3 * 5 = 25 s instead of hanging until the kernel's two-hour default.
_KEEPALIVES: dict[str, Any] = {
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3, "connect_timeout": 5,
}


def session_options(name: str | None = None, *, prepare: bool = False) -> dict[str, Any]:
    """Connection options of a long-lived session of pgqueue's own.

    Args:
        name: the role of the session (``claim``, ``listen``, ``heartbeat``...): its
            ``application_name`` is then ``pgqueue-<name>``, so an operator can count a worker's
            sessions in ``pg_stat_activity`` (and the soak's chaos can find them).
        prepare: allow psycopg's server-side prepared statements (after a query's 5th execution).
            Only with no pooler in between: behind PgBouncer < 1.21 in transaction mode the next
            statement may run on another server connection, where ``_pg3_0`` does not exist.
            pgqueue's queries are cheap to plan, but the claim and ack statements run thousands of
            times a second, and preparing them roughly halves their server CPU.
    """
    options = dict(_KEEPALIVES)
    if not prepare:
        options["prepare_threshold"] = None
    if name is not None:
        options["application_name"] = f"pgqueue-{name}"
    return options


def capped_backoff(failures: int, *, base: float, cap: float, doublings: int) -> float:
    """Seconds to wait after ``failures`` failures in a row: ``base`` doubled per failure (at most
    ``doublings`` times), never more than ``cap``. Each caller keeps its own constants: a claim
    loop retries sooner than a thread that only renews a lease."""
    return min(base * 2.0 ** min(failures, doublings), cap)


# --- an operator's connection ---

# Used when neither the DSN nor PGCONNECT_TIMEOUT sets one: an operator's command against an
# unreachable host should fail within seconds, not hang on the OS's TCP timeout.
DEFAULT_CONNECT_TIMEOUT = 10


def default_connect_timeout(params: dict[str, Any]) -> dict[str, Any]:
    """``connect_timeout`` to pass to ``psycopg.connect`` for a DSN parsed into ``params``: the
    default unless the DSN or ``PGCONNECT_TIMEOUT`` sets one (an explicit keyword would win over both)."""
    if "connect_timeout" in params or os.environ.get("PGCONNECT_TIMEOUT"):
        return {}
    return {"connect_timeout": DEFAULT_CONNECT_TIMEOUT}


def _password_of(conninfo: str) -> str | None:
    try:
        return psycopg.conninfo.conninfo_to_dict(conninfo).get("password")  # type: ignore[return-value]
    except psycopg.Error:
        from urllib.parse import urlsplit

        try:
            return urlsplit(conninfo).password if "://" in conninfo else None
        except ValueError:
            return None


def _reason(exc: BaseException, password: str | None, dsn: str = "") -> str:
    from pgqueue.settings import scrub_secrets

    reason = first_line(exc)
    return scrub_secrets(reason.replace(password, "***") if password else reason, dsn)


def check_dsn(dsn: str) -> str:
    """``dsn`` if libpq can parse it.

    Raises:
        InvalidDSN: it cannot (an un-encoded ``%`` in the password, a malformed IPv6 host): one
            line, the password hidden. A process that would only retry such a DSN forever (a
            worker, a scheduler) refuses to start instead.
    """
    from pgqueue.settings import redact_dsn

    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise InvalidDSN(f"{redact_dsn(dsn)} is not a valid PostgreSQL DSN: {_reason(exc, None, dsn)}") from None
    return dsn


class _ClampedTimestamptzLoader(psycopg.types.datetime.TimestamptzLoader):
    def load(self, data: Any) -> Any:
        try:
            return super().load(data)
        except psycopg.DataError:
            return _clamp(data)


class _ClampedTimestamptzBinaryLoader(psycopg.types.datetime.TimestamptzBinaryLoader):
    def load(self, data: Any) -> Any:
        try:
            return super().load(data)
        except psycopg.DataError:
            # Binary: a signed count of microseconds since 2000-01-01; the sign says which end.
            return _clamp(b"-" if int.from_bytes(bytes(data)[:8], "big", signed=True) < 0 else b"")


def _clamp(data: Any) -> datetime:
    raw = bytes(data)
    return datetime.min.replace(tzinfo=UTC) if raw.startswith(b"-") or raw.endswith(b"BC") else \
        datetime.max.replace(tzinfo=UTC)


def tolerate_unreadable_timestamps(conn: psycopg.Connection[Any]) -> None:
    """Read a timestamptz Python cannot hold (after year 9999, or BC: PostgreSQL stores them) as
    ``datetime.max``/``datetime.min`` on this connection, instead of failing the whole listing.

    Enqueue refuses such values since this release (see docs/guide/enqueueing.md, Limits), but a
    row written earlier, or straight with SQL, would otherwise make ``jobs list`` unusable.
    Only pgqueue's own connections (the CLI's, the dashboard's) get this; an application's
    connection keeps psycopg's behaviour.
    """
    conn.adapters.register_loader("timestamptz", _ClampedTimestamptzLoader)
    conn.adapters.register_loader("timestamptz", _ClampedTimestamptzBinaryLoader)


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """Open a connection of pgqueue's own (CLI, maintenance), not one the application lends us.

    The caller closes it (``with connect(dsn) as conn:`` commits on success, rolls back on error).

    Raises:
        InvalidDSN: ``dsn`` is not a PostgreSQL address psycopg can parse.
        DatabaseUnavailable: the server cannot be reached or refused us. The message shows the DSN
            without its password.
    """
    from pgqueue.settings import normalize_dsn, redact_dsn

    conninfo = normalize_dsn(dsn)
    password = _password_of(conninfo)
    shown = redact_dsn(conninfo)
    if password and password in shown:  # a form redact_dsn does not know; never echo the secret
        shown = shown.replace(password, "***")
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise InvalidDSN(f"{shown} is not a valid PostgreSQL DSN: {_reason(exc, password, conninfo)}") from None
    try:
        conn = psycopg.connect(conninfo, autocommit=autocommit, **default_connect_timeout(params))
        tolerate_unreadable_timestamps(conn)
        return conn
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to {shown}: {_reason(exc, password, conninfo)}") from None
    except psycopg.Error as exc:
        raise InvalidDSN(f"{shown}: {_reason(exc, password, conninfo)}") from None


def open_connection(dsn: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """A plain psycopg connection to ``dsn`` (``App.connect``); the caller closes it."""
    with translate_errors():
        return psycopg.connect(dsn, autocommit=autocommit)


async def open_async_connection(dsn: str, *, autocommit: bool = False) -> psycopg.AsyncConnection[Any]:
    """Async twin of :func:`open_connection` (``App.enqueue_async(None, ...)``); the caller closes it."""
    with translate_errors():
        return await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit)


# --- sessions that must not hang on a lost network path ---

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


@contextlib.contextmanager
def longer_answer_timeout(conn: psycopg.Connection[Any], seconds: float) -> Iterator[None]:
    """Let one long statement (a VACUUM of a big table) outlast a bounded session's answer timeout;
    TCP keepalives still notice a dead path meanwhile. A no-op on an unbounded connection."""
    previous = getattr(conn, "answer_timeout", None)
    if previous is None:
        yield
        return
    conn.answer_timeout = max(previous, seconds)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        conn.answer_timeout = previous  # type: ignore[attr-defined]


def session_broken(conn: psycopg.Connection[Any]) -> bool:
    """Whether the session itself failed (the server or the network went away), as opposed to a
    statement failing on a live session."""
    return conn.broken


async def open_async(dsn: str, name: str) -> psycopg.AsyncConnection[Any]:
    """A short-lived autocommit session with :func:`session_options` (``async with`` closes it)."""
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, **session_options(name))


# --- reconnecting sessions ---

# The policy both flavours share. The server ends idle sessions (a role's idle_session_timeout,
# pg_terminate_backend, a restart) and the client only learns it with its next statement, which
# then never ran. Retrying it once on a new session is what a caller backing off would do anyway,
# minus the delay and the warning; a failure on a fresh session, or a statement error on a live
# one (read-only, timeout), still reaches the caller.

_SESSION_ERRORS = (PgqueueError, psycopg.Error)


def _dead_on_reuse(reused: bool, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    return reused and conn.broken


def _usable(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None) -> bool:
    return conn is not None and not conn.closed and not conn.broken


class ReconnectingSession:
    """One autocommit session (a :class:`BoundedConnection` with :func:`session_options`) that is
    opened on first use and reopened after a failure.

    Args:
        dsn: the database.
        name: the session's role, in its application name (``pgqueue-<name>``).
        log: where a replaced session is reported (debug: it is routine).
        prepare: see :func:`session_options`.
    """

    def __init__(self, dsn: str, name: str, *, log: Any, prepare: bool = False) -> None:
        self.dsn = dsn
        self.name = name
        self.options = session_options(name, prepare=prepare)
        self._log = log
        self.conn: psycopg.Connection[Any] | None = None

    def get(self) -> psycopg.Connection[Any]:
        conn = self.conn
        if conn is None or not _usable(conn):
            self.close()
            conn = self.conn = BoundedConnection.connect(self.dsn, autocommit=True, **self.options)
        return conn

    def run(self, operation: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``operation``, replacing at once a session that turns out to be dead on first use."""
        reused = _usable(self.conn)
        conn = self.get()
        try:
            return operation(conn)
        except _SESSION_ERRORS:
            if not _dead_on_reuse(reused, conn):
                raise
        self._log.debug("database.session_replaced")
        self.close()
        return operation(self.get())

    def close(self) -> None:
        if self.conn is not None:
            # Closing a broken connection can fail; there is nothing left to release then.
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
            self.conn = None


class AsyncReconnectingSession:
    """The async twin of :class:`ReconnectingSession` (a :class:`BoundedAsyncConnection`): a claim
    or ack whose answer never comes ends the session after ``PGQUEUE_NETWORK_TIMEOUT_SECONDS``, and
    the caller's loop reconnects, instead of waiting forever."""

    def __init__(self, dsn: str, name: str, *, log: Any, prepare: bool = False,
                 on_connect: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None) -> None:
        self.dsn = dsn
        self.name = name
        self.options = session_options(name, prepare=prepare)
        self._log = log
        #: Runs on every new connection before its first use (session settings).
        self.on_connect = on_connect
        self.conn: psycopg.AsyncConnection[Any] | None = None

    async def get(self) -> psycopg.AsyncConnection[Any]:
        conn = self.conn
        if conn is None or not _usable(conn):
            await self.close()
            conn = await BoundedAsyncConnection.connect(self.dsn, autocommit=True, **self.options)
            if self.on_connect is not None:
                try:
                    await self.on_connect(conn)
                except BaseException:
                    await conn.close()
                    raise
            self.conn = conn
        return conn

    async def run(self, operation: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run ``operation``, replacing at once a session that turns out to be dead on first use."""
        reused = _usable(self.conn)
        conn = await self.get()
        try:
            return await operation(conn)
        except _SESSION_ERRORS:
            if not _dead_on_reuse(reused, conn):
                raise
        self._log.debug("database.session_replaced")
        await self.close()
        return await operation(await self.get())

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self.conn.close()
            self.conn = None
