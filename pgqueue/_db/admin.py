"""Server-level administration: scratch databases for the demo and the benchmark."""

from __future__ import annotations

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


def recreate_database(dsn: str, database: str) -> str:
    """Drop (if present) and create ``database`` on ``dsn``'s server; return its DSN.

    Raises:
        ConfigurationError: the role may not create databases.
    """
    with translate_errors(), psycopg.connect(dsn, autocommit=True) as conn:
        name = sql.Identifier(database)
        try:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ConfigurationError(f"cannot create database {database!r}: {exc.diag.message_primary}") from exc
    return with_database(dsn, database)


def drop_database(dsn: str, database: str) -> None:
    with translate_errors(), psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
