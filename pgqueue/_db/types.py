"""Connection types for annotations outside the data layer, which never imports the driver.

Each is a string alias over names imported only for type checkers, so importing this module
loads neither psycopg nor SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session


class DjangoConnection(Protocol):
    """Django's ``django.db.connection`` or ``connections[alias]`` (postgresql backend, psycopg 3)."""

    alias: str
    vendor: str

    def ensure_connection(self) -> None: ...


#: A connection of the application's that pgqueue enqueues on, inside its transaction.
Connection: TypeAlias = "psycopg.Connection[Any] | Session | SAConnection | DjangoConnection"

#: The async twin of :data:`Connection`.
AsyncConnection: TypeAlias = "psycopg.AsyncConnection[Any] | AsyncSession | SAAsyncConnection"

#: A psycopg connection: pgqueue's own sessions, and the one a transactional handler gets.
PsycopgConnection: TypeAlias = "psycopg.Connection[Any]"

#: The async twin of :data:`PsycopgConnection`.
AsyncPsycopgConnection: TypeAlias = "psycopg.AsyncConnection[Any]"
