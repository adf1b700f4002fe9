"""The one error policy of the data layer: which driver failures become which pgqueue errors.

psycopg's exceptions are translated here and nowhere else. Code outside ``pgqueue._db`` that must
tell kinds of failure apart (the worker's loops) catches the tuples below instead of naming
psycopg's classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from pgqueue.errors import DatabaseUnavailable, PgqueueError, SchemaNotReady

#: What the driver raises for a statement or a session that failed, untranslated.
DriverError = psycopg.Error

#: Everything a round trip to the database can raise: a translated error, one of the driver's own
#: (statement errors are not all translated, see :func:`translate_errors`), or the socket's.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (PgqueueError, psycopg.Error, OSError)

#: The database refused the values of a statement (not the connection or the server failing):
#: sending the same values again would be refused again.
#: A program limit (SQLSTATE class 54: a value too large for jsonb, an index row over the btree
#: maximum, too many columns) is one too: psycopg files it under OperationalError, like a lost
#: connection, which made the worker retry such an outcome forever and pause its claims meanwhile.
REFUSED_DATA: tuple[type[BaseException], ...] = (psycopg.DataError, psycopg.IntegrityError,
                                                 psycopg.ProgrammingError, psycopg.errors.ProgramLimitExceeded)


def refused(exc: BaseException) -> bool:
    """True when ``exc`` from writing values means the values, not the database, are the problem:
    refused data, or an error raised before anything reached the server (the driver could not
    encode a value), which sending the same values again would raise again."""
    return isinstance(exc, REFUSED_DATA) or not isinstance(exc, DATABASE_ERRORS)


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (a server error's primary message), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def translate(exc: BaseException, *, every_error: bool = False) -> PgqueueError | None:
    """The pgqueue error that stands for the driver's ``exc`` (None: it keeps its own type).

    A missing schema becomes ``SchemaNotReady``; a lost connection, or a server that takes no
    writes, ``DatabaseUnavailable``. Other statement errors keep psycopg's own type by default:
    the worker's acker tells refused data (:data:`REFUSED_DATA`) from an outage by them, and
    ``App.enqueue`` has always let them reach the caller as they are.

    Args:
        every_error: also turn a missing column into ``SchemaNotReady`` and any other psycopg
            error into a ``PgqueueError`` naming its SQLSTATE (the scheduler's policy: its loop
            logs and retries a ``PgqueueError``, and the CLI prints it as one line).
    """
    if not isinstance(exc, psycopg.Error):
        return None
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName
                  | psycopg.errors.UndefinedFunction):
        return SchemaNotReady(f"the pgqueue schema is missing or out of date ({exc.diag.message_primary}): "
                              "run `pgqueue migrate`")
    if isinstance(exc, psycopg.errors.ProgramLimitExceeded):
        # The server is fine; the values are too large for it (see REFUSED_DATA).
        return None if not every_error else PgqueueError(
            f"database refused the values ({exc.sqlstate}): {first_line(exc)}")
    if isinstance(exc, psycopg.OperationalError):
        return DatabaseUnavailable(f"database unavailable: {first_line(exc)}")
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        # A primary fenced read-only (default_transaction_read_only) or a DSN that now reaches a
        # standby: the server is up but takes no writes, so nothing was written. Not an
        # OperationalError in psycopg's hierarchy (it is SQLSTATE class 25), hence its own case.
        return DatabaseUnavailable(f"database unavailable for writes: it is read-only ({exc.diag.message_primary})")
    if not every_error:
        return None
    if isinstance(exc, psycopg.errors.UndefinedColumn):
        return SchemaNotReady(f"the pgqueue schema is out of date ({exc.diag.message_primary}): run `pgqueue migrate`")
    # Anything else (a lock or statement timeout, a deadlock) reaches the scheduler loop as a
    # PgqueueError, which it logs and retries, and the CLI as one line.
    return PgqueueError(f"database error ({exc.sqlstate or type(exc).__name__}): {first_line(exc)}")


@contextmanager
def translate_errors(*, every_error: bool = False) -> Iterator[None]:
    """Raise :func:`translate`'s pgqueue error for a driver error raised inside the block."""
    try:
        yield
    except psycopg.Error as exc:
        error = translate(exc, every_error=every_error)
        if error is None:
            raise
        raise error from exc
