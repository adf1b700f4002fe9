"""Run pgqueue's schema migrations from an application (its own alembic ``env.py`` or deploy code).

pgqueue records its revisions in its own version table, ``pgqueue_alembic_version``, so they
never collide with the application's ``alembic_version``.

Example (in your alembic ``env.py``, after your own migrations, on the same connection)::

    with context.begin_transaction():
        context.run_migrations()
        pgqueue.migrations.upgrade(connection)
"""

from __future__ import annotations

from typing import Any

from pgqueue import _migrate


def upgrade(target: Any) -> None:
    """Create or upgrade the pgqueue schema.

    Args:
        target: a DSN string (pgqueue connects and commits), or an open SQLAlchemy ``Connection``
            (pgqueue's DDL runs in that connection's transaction; the caller commits).

    Raises:
        pgqueue.errors.DatabaseUnavailable: the database cannot be reached.
        pgqueue.errors.PgqueueError: a migration failed (its transaction was rolled back).
    """
    if isinstance(target, str):
        _migrate.upgrade(target)
    else:
        _migrate.upgrade_connection(target)


def pending(dsn: str) -> list[str]:
    """Revision ids not yet applied, oldest first (empty when up to date): a deploy gate."""
    return _migrate.check(dsn)
