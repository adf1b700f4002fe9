"""Logins for pgqueue's shipped roles (``sql/roles.sql``), for tests that act as each of them.

Roles are cluster-wide, so each test module creates its own LOGIN roles under unique names, each a
member of one shipped group role, and drops them when done. ``roles.sql`` itself runs against
each test's scratch database (its grants and policies are per database).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from tests.helpers import REPO_ROOT, admin_connection

ROLES = ("enqueuer", "worker", "admin", "reader")
ROLES_SQL = REPO_ROOT / "sql" / "roles.sql"
# Serialises runs of roles.sql, which create the cluster-wide group roles (the bytes of "pgqroles").
_ROLES_LOCK_KEY = int.from_bytes(b"pgqroles", "big")


@dataclass(frozen=True)
class Logins:
    """A LOGIN role per shipped role: ``names["worker"]`` is a member of ``pgqueue_worker``."""

    names: dict[str, str]
    password: str

    def dsn(self, database_dsn: str, role: str) -> str:
        """``database_dsn`` (a superuser's) logged in as the login of ``role`` instead."""
        user = self.names[role]
        if "://" not in database_dsn:
            params = psycopg.conninfo.conninfo_to_dict(database_dsn)
            params.update(user=user, password=self.password)
            return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]
        parts = urlsplit(database_dsn)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{quote(user)}:{quote(self.password)}@{host}"))


def apply_roles_sql(database_dsn: str, server_dsn: str) -> None:
    """Run ``sql/roles.sql`` against a database, as its owner."""
    with admin_connection(server_dsn) as admin:
        admin.execute("SELECT pg_advisory_lock(%s)", [_ROLES_LOCK_KEY])
        try:
            with psycopg.connect(database_dsn, autocommit=True) as conn:
                conn.execute(ROLES_SQL.read_text())
        finally:
            admin.execute("SELECT pg_advisory_unlock(%s)", [_ROLES_LOCK_KEY])


@contextmanager
def shipped_role_logins(server_dsn: str) -> Iterator[Logins]:
    """Create a LOGIN role in each shipped group role (creating the groups if missing); drop them after."""
    prefix = f"pgq_{uuid.uuid4().hex[:10]}"
    logins = Logins({role: f"{prefix}_{role}" for role in ROLES}, secrets.token_hex(12))
    with admin_connection(server_dsn) as admin:
        admin.execute("SELECT pg_advisory_lock(%s)", [_ROLES_LOCK_KEY])
        try:
            for role, name in logins.names.items():
                group = sql.Identifier(f"pgqueue_{role}")
                admin.execute(sql.SQL("DO $$ BEGIN CREATE ROLE {} NOLOGIN; EXCEPTION WHEN duplicate_object THEN "
                                      "NULL; END $$").format(group))
                admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                    sql.Identifier(name), sql.Literal(logins.password), group))
        finally:
            admin.execute("SELECT pg_advisory_unlock(%s)", [_ROLES_LOCK_KEY])
    try:
        yield logins
    finally:
        with admin_connection(server_dsn) as admin:
            for name in logins.names.values():
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
