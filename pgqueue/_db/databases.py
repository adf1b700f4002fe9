"""Whole databases on a server: the scratch databases of the demo, the benchmark and the soak."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from pgqueue._db.errors import translate_errors
from pgqueue.errors import ConfigurationError


def with_database(dsn: str, database: str) -> str:
    """The same server and credentials as ``dsn``, pointing at ``database``."""
    if "://" not in dsn:
        return f"{dsn} dbname={database}"
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def _run(dsn: str, statements: Sequence[sql.Composed], refused: str) -> None:
    # CREATE/DROP DATABASE cannot run inside a transaction block: an autocommit session of its own.
    with translate_errors(), psycopg.connect(dsn, autocommit=True) as conn:
        try:
            for statement in statements:
                conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ConfigurationError(f"{refused}: {exc.diag.message_primary}") from exc


def _drop(database: str) -> sql.Composed:
    return sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))


def recreate_database(dsn: str, database: str) -> str:
    """Drop (if present) and create ``database`` on ``dsn``'s server; return its DSN.

    Raises:
        ConfigurationError: the role may not create databases.
    """
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database))
    _run(dsn, [_drop(database), create], f"cannot create database {database!r}")
    return with_database(dsn, database)


def create_database(dsn: str, database: str, *, template: str | None = None, refused: str | None = None) -> str:
    """Create ``database`` on ``dsn``'s server, as a copy of ``template`` when given (a file copy,
    far quicker than migrating again); return its DSN.

    Raises:
        ConfigurationError: the role may not create databases; the message starts with ``refused``.
    """
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database))
    if template is not None:
        statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
    _run(dsn, [statement], refused or f"cannot create database {database!r}")
    return with_database(dsn, database)


def drop_database(dsn: str, database: str) -> None:
    """Drop ``database`` if it exists, ending its sessions."""
    _run(dsn, [_drop(database)], f"cannot drop database {database!r}")


def ensure_template(dsn: str, name: str, build: Callable[[str], None], *, lock_key: int) -> None:
    """Make sure the template database ``name`` exists on ``dsn``'s server, calling ``build`` with
    the DSN of a new database to fill it if not.

    One process builds while the others wait on a session advisory lock (``lock_key``), then reuse
    it. It is built under a temporary name and renamed when complete, so an interrupted build never
    leaves a half-built template; a template accepts no connections, so ``CREATE DATABASE ...
    TEMPLATE`` never finds one in use.
    """
    building = f"{name}_building"
    with translate_errors(), psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_advisory_lock(%s)", [lock_key])
        try:
            if admin.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", [name]).fetchone():
                return
            if admin.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", [building]).fetchone():
                admin.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(building)))
                admin.execute(_drop(building))
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(building)))
            build(with_database(dsn, building))
            admin.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
                sql.Identifier(building)))
            admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(building), sql.Identifier(name)))
        finally:
            admin.execute("SELECT pg_advisory_unlock(%s)", [lock_key])


# Scratch runs' locks live in the two-key advisory space under this first key ("pqsr"), apart from
# the single-key locks of migrations and templates.
_RUN_LOCK_SPACE = int.from_bytes(b"pqsr", "big")


class ScratchRun:
    """The databases of one scratch run, named ``<family>_<8 hex digits>`` and ``..._<n>``, marked
    as alive by a session advisory lock held from before the first is created until after the last
    is dropped.

    The lock dies with its session, so when a run is killed (SIGKILL, a lost machine) a later run
    of the same family sees databases whose lock is free and drops them (:meth:`sweep`), and never
    touches those of a run still going.
    """

    def __init__(self, dsn: str, family: str, run_id: str) -> None:
        if not re.fullmatch(r"[0-9a-f]{8}", run_id):
            raise ValueError(f"a scratch run id is 8 hex digits, not {run_id!r}")
        self.dsn = dsn
        self.family = family
        self.run_id = run_id
        self.name = f"{family}_{run_id}"
        self._session: psycopg.Connection[Any] | None = None

    @staticmethod
    def _lock_key(run_id: str) -> int:
        return int(run_id, 16) - 2**31  # the second key is a signed int4

    def hold(self) -> None:
        """Take this run's lock (kept until :meth:`release`)."""
        with translate_errors():
            self._session = psycopg.connect(self.dsn, autocommit=True, application_name=f"{self.name} lock")
            self._session.execute("SELECT pg_advisory_lock(%s, %s)",
                                  [_RUN_LOCK_SPACE, self._lock_key(self.run_id)])

    def release(self) -> None:
        if self._session is not None:
            self._session.close()  # a session lock ends with its session
            self._session = None

    def sweep(self) -> list[str]:
        """Drop the databases of this family's runs that no live session holds; return their names.

        A database this role may not drop (another role's run) is left alone.
        """
        pattern = re.compile(rf"{re.escape(self.family)}_([0-9a-f]{{8}})(?:_[0-9]+)?")
        with translate_errors(), psycopg.connect(self.dsn, autocommit=True) as admin:
            names = [row[0] for row in admin.execute(
                "SELECT datname FROM pg_catalog.pg_database WHERE starts_with(datname, %s) ORDER BY datname DESC",
                [f"{self.family}_"])]
            runs: dict[str, list[str]] = {}
            for name in names:
                match = pattern.fullmatch(name)
                if match and match.group(1) != self.run_id:
                    runs.setdefault(match.group(1), []).append(name)
            dropped: list[str] = []
            for run_id, databases in runs.items():
                key = [_RUN_LOCK_SPACE, self._lock_key(run_id)]
                if not admin.execute("SELECT pg_try_advisory_lock(%s, %s)", key).fetchone()[0]:  # type: ignore[index]
                    continue  # that run is alive
                try:
                    for database in databases:  # clones first (DESC), then the run's template
                        try:
                            admin.execute(_drop(database))
                        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectInUse):
                            continue  # another role's run, or a prepared transaction: not ours to force
                        dropped.append(database)
                finally:
                    admin.execute("SELECT pg_advisory_unlock(%s, %s)", key)
        return dropped
