"""Scratch databases for the benchmark, and what it reads about the server and the machine.

One database, ``pgqueue_bench_<random>``, is created and migrated once; it then serves as the
template every scenario's fresh database is cloned from (``CREATE DATABASE ... TEMPLATE`` is a
file copy, far quicker than running the migrations again). All of them are dropped
``WITH (FORCE)`` at the end, whatever happened.
"""

from __future__ import annotations

import os
import platform
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from pgqueue import _migrate
from pgqueue._bench import sql as bench_sql
from pgqueue._db.databases import with_database
from pgqueue._db.errors import translate_errors
from pgqueue.errors import ConfigurationError


class ScratchDatabases:
    """The migrated template and the per-run clones made from it."""

    def __init__(self, server_dsn: str) -> None:
        self.server_dsn = server_dsn
        self.prefix = f"pgqueue_bench_{uuid.uuid4().hex[:8]}"
        self._clones = 0
        self._created: list[str] = []

    def _admin(self, statement: sql.Composed) -> None:
        with translate_errors(), psycopg.connect(self.server_dsn, autocommit=True) as conn:
            try:
                conn.execute(statement)
            except psycopg.errors.InsufficientPrivilege as exc:
                raise ConfigurationError(
                    f"pgqueue bench needs a role that may create databases: {exc.diag.message_primary}") from exc

    def create_template(self) -> None:
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.prefix)))
        self._created.append(self.prefix)
        _migrate.upgrade(with_database(self.server_dsn, self.prefix))

    @contextmanager
    def fresh(self) -> Iterator[str]:
        """A clone of the migrated template: the pgqueue schema at head and no rows."""
        self._clones += 1
        name = f"{self.prefix}_{self._clones}"
        self._admin(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(self.prefix)))
        try:
            yield with_database(self.server_dsn, name)
        finally:
            self._drop(name)

    def _drop(self, name: str) -> None:
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def drop_all(self) -> None:
        for name in reversed(self._created):
            self._drop(name)
        self._created.clear()


def server_info(dsn: str) -> dict[str, str]:
    with translate_errors(), psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(bench_sql.SERVER_SETTINGS).fetchall()
    return {str(name): str(value) for name, value in rows}


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict[str, Any]:
    """The machine the benchmark client ran on (the server's, when it is local)."""
    memory = _memory_bytes()
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(memory / 2**30, 1) if memory else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def scalar(conn: psycopg.Connection[Any], query: Any, params: dict[str, Any] | None = None) -> Any:
    """The first column of the first row (None when there is no row)."""
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None
