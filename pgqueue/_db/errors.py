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
REFUSED_DATA: tuple[type[BaseException], ...] = (psycopg.DataError, psycopg.IntegrityError,
                                                 psycopg.ProgrammingError)


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (a server error's primary message), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


@contextmanager
def translate_errors(*, every_error: bool = False) -> Iterator[None]:
    """Map psycopg failures the caller can act on to pgqueue's typed errors.

    A missing schema becomes ``SchemaNotReady``; a lost connection, or a server that takes no
    writes, ``DatabaseUnavailable``. Other statement errors keep psycopg's own type by default:
    the worker's acker tells refused data (:data:`REFUSED_DATA`) from an outage by them, and
    ``App.enqueue`` has always let them reach the caller as they are.

    Args:
        every_error: also turn a missing column into ``SchemaNotReady`` and any other psycopg
            error into a ``PgqueueError`` naming its SQLSTATE (the scheduler's policy: its loop
            logs and retries a ``PgqueueError``, and the CLI prints it as one line).
    """
    try:
        yield
    except PgqueueError:
        raise
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedFunction) as exc:
        raise SchemaNotReady(f"the pgqueue schema is missing or out of date ({exc.diag.message_primary}): "
                             "run `pgqueue migrate`") from exc
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"database unavailable: {first_line(exc)}") from exc
    except psycopg.errors.ReadOnlySqlTransaction as exc:
        # A primary fenced read-only (default_transaction_read_only) or a DSN that now reaches a
        # standby: the server is up but takes no writes, so nothing was written. Not an
        # OperationalError in psycopg's hierarchy (it is SQLSTATE class 25), hence its own clause.
        raise DatabaseUnavailable(f"database unavailable for writes: it is read-only "
                                  f"({exc.diag.message_primary})") from exc
    except psycopg.errors.UndefinedColumn as exc:
        if not every_error:
            raise
        raise SchemaNotReady(f"the pgqueue schema is out of date ({exc.diag.message_primary}): "
                             "run `pgqueue migrate`") from exc
    except psycopg.Error as exc:
        if not every_error:
            raise
        # Anything else (a lock or statement timeout, a deadlock) reaches the scheduler loop as a
        # PgqueueError, which it logs and retries, and the CLI as one line.
        raise PgqueueError(f"database error ({exc.sqlstate or type(exc).__name__}): {first_line(exc)}") from exc
