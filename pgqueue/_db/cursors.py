"""The cursors pgqueue runs its SQL on: psycopg's own classes, whatever the connection's factory.

A connection's ``cursor_factory`` and ``row_factory`` are the application's choice, and
``conn.cursor()`` / ``conn.execute()`` follow them: a ``RawCursor`` (``$1`` placeholders) refused
every query of pgqueue's (``%(name)s`` placeholders) with "raw queries require a sequence of
parameters", and a ``ClientCursor`` (often set app-wide for PgBouncer) binds values in the client.
The stores therefore never call ``conn.cursor()`` or ``conn.execute()``: they run every statement
through the functions here, which build ``psycopg.Cursor`` / ``psycopg.AsyncCursor`` themselves,
with tuple rows unless a row factory is given (``tests/unit/test_cursors.py`` keeps it so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar, overload

import psycopg
from psycopg.rows import AsyncRowFactory, RowFactory, TupleRow, tuple_row

if TYPE_CHECKING:
    # Type-only: QueryNoTemplate is psycopg 3.3's (queries without t-strings, all of pgqueue's).
    from psycopg.abc import Params, QueryNoTemplate

Row = TypeVar("Row")


@overload
def cursor_on(conn: psycopg.Connection[Any]) -> psycopg.Cursor[TupleRow]: ...


@overload
def cursor_on(conn: psycopg.Connection[Any], *, row_factory: RowFactory[Row]) -> psycopg.Cursor[Row]: ...


def cursor_on(conn: psycopg.Connection[Any], *, row_factory: RowFactory[Any] = tuple_row) -> psycopg.Cursor[Any]:
    """A ``psycopg.Cursor`` (server-side binding) on ``conn``, whatever its cursor_factory."""
    return psycopg.Cursor(conn, row_factory=row_factory)


def execute_on(conn: psycopg.Connection[Any], query: QueryNoTemplate,
               params: Params | None = None) -> psycopg.Cursor[TupleRow]:
    """``conn.execute(query, params)`` on a cursor of :func:`cursor_on`'s (tuple rows)."""
    return psycopg.Cursor(conn, row_factory=tuple_row).execute(query, params)


@overload
def async_cursor_on(conn: psycopg.AsyncConnection[Any]) -> psycopg.AsyncCursor[TupleRow]: ...


@overload
def async_cursor_on(conn: psycopg.AsyncConnection[Any], *,
                    row_factory: AsyncRowFactory[Row]) -> psycopg.AsyncCursor[Row]: ...


def async_cursor_on(conn: psycopg.AsyncConnection[Any], *,
                    row_factory: AsyncRowFactory[Any] = tuple_row) -> psycopg.AsyncCursor[Any]:
    """Async twin of :func:`cursor_on`."""
    return psycopg.AsyncCursor(conn, row_factory=row_factory)


async def async_execute_on(conn: psycopg.AsyncConnection[Any], query: QueryNoTemplate,
                           params: Params | None = None) -> psycopg.AsyncCursor[TupleRow]:
    """Async twin of :func:`execute_on`."""
    return await psycopg.AsyncCursor(conn, row_factory=tuple_row).execute(query, params)
