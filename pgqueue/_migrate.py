"""Run pgqueue's alembic migrations from code: ``pgqueue migrate``, the test fixtures, and apps.

The migration scripts are the checkout's top-level ``alembic/`` when running from source (an
editable install), else the copy the wheel ships as ``pgqueue/_alembic``. Either way they run
in-process on a connection handed to ``alembic/env.py`` (alembic cookbook, "Sharing a Connection
with a Series of Migration Commands and Environments"), inside one transaction that first takes
``pg_advisory_xact_lock(MIGRATION_LOCK_KEY)``, so concurrent deploys serialise.

pgqueue's revisions are recorded in ``pgqueue_alembic_version`` (the connection's current schema,
normally ``public``), never in an application's own ``alembic_version``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from alembic import command
from alembic import context as alembic_context
from alembic import op as alembic_op
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.pool import NullPool

from pgqueue._db.errors import first_line
from pgqueue._db.sessions import default_connect_timeout
from pgqueue.errors import ConfigurationError, DatabaseUnavailable, InvalidDSN, PgqueueError
from pgqueue.settings import normalize_dsn, redact_dsn

VERSION_TABLE = "pgqueue_alembic_version"
# Fixed key of the transaction-scoped advisory lock every pgqueue migration takes first
# (the bytes of "pgqueue!": stable, positive, unlikely to collide with an app's keys).
MIGRATION_LOCK_KEY = int.from_bytes(b"pgqueue!", "big")

_PACKAGE_DIR = Path(__file__).resolve().parent


def script_location() -> Path:
    """The directory holding ``env.py`` and ``versions/``: the checkout's, else the installed copy."""
    checkout = _PACKAGE_DIR.parent
    # Both markers: in an installed wheel the parent is site-packages, whose alembic/ is the library.
    if (checkout / "alembic.ini").is_file() and (checkout / "alembic" / "env.py").is_file():
        return checkout / "alembic"
    packaged = _PACKAGE_DIR / "_alembic"
    if (packaged / "env.py").is_file():
        return packaged
    raise ConfigurationError(
        f"pgqueue's migration scripts are missing: neither {checkout / 'alembic'} nor {packaged} has env.py"
    )


def alembic_config(output_buffer: io.StringIO | None = None) -> Config:
    """An alembic ``Config`` for pgqueue's scripts, built without an ini file.

    No ini file means ``env.py`` leaves logging alone: the CLI (or the application) owns it.
    """
    config = Config(output_buffer=output_buffer)
    # configparser interpolates %; a path may contain one.
    config.set_main_option("script_location", str(script_location()).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    return config


def create_engine(dsn: str) -> sa.Engine:
    """A pool-less SQLAlchemy engine on psycopg for ``dsn`` (libpq or ``postgresql+psycopg://`` form).

    psycopg parses the DSN itself (through ``creator``), so every libpq form works: URLs,
    ``key=value`` strings, Unix-socket hosts, and passwords with any characters.
    """
    conninfo = normalize_dsn(dsn)

    def creator() -> psycopg.Connection[Any]:
        # As every other command's connection: a host that never answers fails in seconds
        # instead of hanging `pgqueue migrate` (and health's schema check) on the OS's TCP timeout.
        timeout = default_connect_timeout(psycopg.conninfo.conninfo_to_dict(conninfo))
        return psycopg.connect(conninfo, **timeout)

    return sa.create_engine("postgresql+psycopg://", creator=creator, poolclass=NullPool)


def _first_line(exc: BaseException | None, dsn: str) -> str:
    line = first_line(exc) if exc is not None else "unknown error"
    try:
        password = psycopg.conninfo.conninfo_to_dict(normalize_dsn(dsn)).get("password")
    except (psycopg.Error, PgqueueError):
        password = None
    if password:
        line = line.replace(str(password), "***")
    return line


@contextmanager
def connect(dsn: str) -> Iterator[sa.Connection]:
    """Open one SQLAlchemy connection; a failure to connect becomes :class:`DatabaseUnavailable`.

    Raises:
        InvalidDSN: ``dsn`` is not a PostgreSQL address psycopg can parse.
        DatabaseUnavailable: the server cannot be reached or refuses the connection.
    """
    engine = create_engine(dsn)
    try:
        try:
            connection = engine.connect()
        except sa.exc.DBAPIError as exc:
            reason = _first_line(exc.orig, dsn)
            if isinstance(exc.orig, psycopg.OperationalError):
                raise DatabaseUnavailable(f"cannot connect to {redact_dsn(dsn)}: {reason}") from None
            raise InvalidDSN(f"{redact_dsn(dsn)}: {reason}") from None
        with connection:
            yield connection
    finally:
        engine.dispose()


def _run(dsn: str, revision: str, *, downgrade: bool) -> None:
    config = alembic_config()
    with connect(dsn) as connection:
        config.attributes["connection"] = connection
        try:
            with _callers_alembic_kept():
                if downgrade:
                    command.downgrade(config, revision)
                else:
                    command.upgrade(config, revision)
        except sa.exc.DBAPIError as exc:
            raise PgqueueError(f"migration failed and was rolled back: {_first_line(exc.orig, dsn)}") from exc
        except CommandError as exc:
            raise PgqueueError(f"migration failed: {exc}") from exc
        # env.py commits its own transaction; this only matters if something ran before it.
        if connection.in_transaction():
            connection.commit()


def upgrade(dsn: str) -> None:
    """Create or upgrade the pgqueue schema to the newest revision (a no-op when up to date).

    Raises:
        DatabaseUnavailable: the database cannot be reached.
        PgqueueError: a migration failed (its transaction was rolled back, nothing changed).
    """
    _run(dsn, "head", downgrade=False)


def downgrade(dsn: str, revision: str = "base") -> None:
    """Downgrade the pgqueue schema; ``base`` removes it (used by tests and by uninstall runbooks)."""
    _run(dsn, revision, downgrade=True)


def _current_heads(dsn: str) -> tuple[str, ...]:
    with connect(dsn) as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        heads = context.get_current_heads()
        connection.rollback()
    return heads


def current(dsn: str) -> str | None:
    """The revision the database's pgqueue schema is at, or None when it has none."""
    heads = _current_heads(dsn)
    return ",".join(sorted(heads)) if heads else None


def check(dsn: str) -> list[str]:
    """Revision ids not yet applied to the database, oldest first; empty when up to date.

    Raises:
        DatabaseUnavailable: the database cannot be reached.
        PgqueueError: the database is at a revision this pgqueue does not know (a newer version migrated it).
    """
    heads = _current_heads(dsn)
    script = ScriptDirectory.from_config(alembic_config())
    try:
        pending = [rev.revision for rev in script.iterate_revisions("heads", heads or "base")]
    except CommandError as exc:
        raise PgqueueError(
            f"the database's pgqueue schema is at revision {', '.join(heads)}, unknown to this pgqueue "
            f"(was it migrated by a newer version?): {exc}"
        ) from exc
    return pending[::-1]


def sql(dsn: str | None = None) -> str:
    """The DDL that ``upgrade`` would run on an empty database, as a script for a DBA to review.

    Nothing connects to the database: ``dsn`` is only checked to be a PostgreSQL address.
    """
    if dsn is not None:
        normalize_dsn(dsn)
    buffer = io.StringIO()
    command.upgrade(alembic_config(output_buffer=buffer), "head", sql=True)
    return buffer.getvalue()


def upgrade_connection(connection: sa.Connection) -> None:
    """Run pgqueue's migrations on an application's open SQLAlchemy connection.

    The caller owns the transaction: when the connection is already inside one (an app's alembic
    ``env.py`` running its own migrations), pgqueue's revisions join it and commit with it.
    Revisions are still recorded in ``pgqueue_alembic_version``.
    """
    config = alembic_config()
    config.attributes["connection"] = connection
    try:
        with _callers_alembic_kept():
            command.upgrade(config, "head")
    except CommandError as exc:
        raise PgqueueError(f"migration failed: {exc}") from exc


@contextmanager
def _callers_alembic_kept() -> Iterator[None]:
    """Put back the ``alembic.context`` and ``alembic.op`` of a command already running.

    An app's ``env.py`` calls :func:`upgrade_connection` (or :func:`upgrade` with a DSN) inside its
    own alembic command, and alembic's module-level proxies hold one command at a time: pgqueue's
    command removes them when it ends, so the app's ``context`` lost its functions and its command
    died on leaving (``KeyError: 'script'``).
    """
    outer = [getattr(module, "_proxy", None) for module in (alembic_context, alembic_op)]
    try:
        yield
    finally:
        for proxy in outer:
            if proxy is not None:
                proxy._install_proxy()
