"""Types for annotating code that calls pgqueue.

Example:
    >>> from pgqueue.typing import Connection
    >>> def sign_up(conn: Connection, email: str) -> int:
    ...     return app.enqueue(conn, "send-welcome", {"to": email})
"""

from pgqueue._db.types import AsyncConnection, AsyncPsycopgConnection, Connection, DjangoConnection, PsycopgConnection

__all__ = ["AsyncConnection", "AsyncPsycopgConnection", "Connection", "DjangoConnection", "PsycopgConnection"]
