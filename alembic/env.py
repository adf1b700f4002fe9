"""Alembic environment for pgqueue's schema.

Used three ways:
- from a checkout: ``PGQUEUE_DSN=... alembic upgrade head`` (or ``-x dsn=...``; else ``DATABASE_URL``);
- offline: ``alembic upgrade head --sql`` prints the DDL, no database needed;
- in-process: ``pgqueue migrate`` (``pgqueue._migrate``) hands over an open SQLAlchemy connection
  in ``config.attributes["connection"]``.

Every run is one transaction that first takes a transaction-scoped advisory lock, so two deploys
migrating at once serialise: the second waits, then finds nothing left to do.
Revisions are recorded in ``pgqueue_alembic_version``, never in an application's ``alembic_version``.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context
from alembic.util.exc import CommandError

from pgqueue._migrate import MIGRATION_LOCK_KEY, VERSION_TABLE, connect
from pgqueue.errors import PgqueueError

config = context.config

# Only the alembic command line configures logging; in-process callers own theirs.
if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _dsn() -> str | None:
    x_args = context.get_x_argument(as_dictionary=True)
    return x_args.get("dsn") or os.environ.get("PGQUEUE_DSN") or os.environ.get("DATABASE_URL") or None


def _run_migrations(connection: sa.Connection | None) -> None:
    common = {
        "version_table": VERSION_TABLE,
        "transactional_ddl": True,
        "transaction_per_migration": False,  # one transaction for the whole run, lock included
    }
    if connection is None:
        # Offline (--sql): the script targets PostgreSQL whatever DSN is configured; it never connects.
        # Named paramstyle: with the driver's pyformat, every `%` in the DDL (RAISE format strings in
        # function bodies) came out doubled, and psql then refused the functions.
        context.configure(dialect_name="postgresql", literal_binds=True,  # type: ignore[arg-type]
                          dialect_opts={"paramstyle": "named"}, **common)
    else:
        context.configure(connection=connection, **common)  # type: ignore[arg-type]
    with context.begin_transaction():
        # Taken before anything is read or written: a concurrent migrator waits here, then sees
        # the committed version row and has nothing left to do.
        context.execute(sa.text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=MIGRATION_LOCK_KEY))
        context.run_migrations()


def run_migrations_online() -> None:
    shared = config.attributes.get("connection")
    if shared is not None:
        _run_migrations(shared)
        return
    dsn = _dsn()
    if not dsn:
        raise CommandError("no database: pass -x dsn=postgresql://..., or set PGQUEUE_DSN or DATABASE_URL")
    try:
        with connect(dsn) as connection:
            _run_migrations(connection)
    except PgqueueError as exc:  # DatabaseUnavailable / InvalidDSN: alembic prints "FAILED: <one line>"
        raise CommandError(str(exc)) from None


if context.is_offline_mode():
    _run_migrations(None)
else:
    run_migrations_online()
