"""Shared fixtures: one PostgreSQL server, one migrated template database, a fresh database per test.

The server is ``PGQUEUE_TEST_DSN`` when set (any superuser DSN, e.g.
``postgresql://root@127.0.0.1:5432/postgres``), else the embedded server kept under
``/tmp/pgqueue-test-home``, which every run and every xdist worker shares.

Fixtures (all DSNs are libpq DSNs, in the same form as the server's: URL or ``key=value``):

- ``pg_server_dsn`` (session): the server's admin database (``postgres``). Superuser; do not
  create objects in it.
- ``template_db`` (session): name of a database migrated to alembic head, built once per
  schema version (its name hashes the migration scripts and ``sql/schema.sql``) and reused by
  later runs. Nobody can connect to it; it only serves as ``CREATE DATABASE ... TEMPLATE``.
- ``dsn``: a fresh database cloned from the template (schema at head, no rows), dropped
  ``WITH (FORCE)`` after the test, so leftover connections never block the drop; the drop runs
  on a background thread, and the session waits for the last ones.
- ``empty_dsn``: a fresh database with no pgqueue schema at all (for migration tests).
- ``conn``: a psycopg connection (``autocommit=False``) to ``dsn``, closed after the test.

``tests/helpers.py`` has ``wait_until`` for anything that waits on another connection or process.

Plugins for the whole suite (``tests/plugins/``):

- ``processes``: real ``pgqueue`` processes (``worker_dsn``, ``db``, ``spawn_worker``,
  ``spawn_pgqueue``, ``run_cli``, ``private_server``); a suite names its app by overriding
  ``process_app``.
- ``timing``: tests marked ``timing`` (a wall-clock bound) are rerun up to twice; nothing else is.
- ``system_binaries``: tests marked ``system_binary("pgbouncer")`` run only with
  ``--system-binaries=pgbouncer`` (``.ci/run`` installs and turns them on).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import TupleRow

from pgqueue import _migrate
from pgqueue._db.databases import ensure_template
from pgqueue.settings import normalize_dsn
from tests.helpers import DROPPER, REPO_ROOT, scratch_database

pytest_plugins = ["tests.plugins.processes", "tests.plugins.timing", "tests.plugins.system_binaries", "pytester"]

TEST_HOME = Path("/tmp/pgqueue-test-home")
# Serialises template builds across xdist workers and concurrent runs (the bytes of "pgqtest!").
_TEMPLATE_LOCK_KEY = int.from_bytes(b"pgqtest!", "big")

# Tests must never touch the developer's own embedded server or application database: code under
# test that resolves a DSN by itself finds the test home, and no inherited PGQUEUE_DSN/DATABASE_URL.
os.environ["PGQUEUE_HOME"] = str(TEST_HOME)
os.environ.pop("PGQUEUE_DSN", None)
os.environ.pop("DATABASE_URL", None)


def _template_name() -> str:
    digest = hashlib.sha256()
    versions = _migrate.script_location() / "versions"
    for path in [*sorted(versions.glob("*.py")), REPO_ROOT / "sql" / "schema.sql"]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return f"pgq_tpl_{digest.hexdigest()[:16]}"


@pytest.fixture(scope="session")
def pg_server_dsn() -> str:
    configured = os.environ.get("PGQUEUE_TEST_DSN")
    if configured:
        return normalize_dsn(configured)
    from pgqueue import _embedded  # only needed when no server is given

    return _embedded.ensure_server(TEST_HOME)


@pytest.fixture(scope="session", autouse=True)
def _drop_scratch_databases() -> Iterator[None]:
    # Scratch databases are dropped in the background (see DatabaseDropper); the session waits.
    yield
    DROPPER.close()


@pytest.fixture(scope="session")
def template_db(pg_server_dsn: str) -> str:
    # Built once under a lock (the other xdist workers wait and reuse it), under a temporary name
    # renamed when complete, and closed to connections (see ensure_template).
    name = _template_name()
    ensure_template(pg_server_dsn, name, _migrate.upgrade, lock_key=_TEMPLATE_LOCK_KEY)
    return name


@pytest.fixture
def dsn(pg_server_dsn: str, template_db: str) -> Iterator[str]:
    with scratch_database(pg_server_dsn, template_db) as database_dsn:
        yield database_dsn


@pytest.fixture
def empty_dsn(pg_server_dsn: str) -> Iterator[str]:
    with scratch_database(pg_server_dsn, "template0") as database_dsn:
        yield database_dsn


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[TupleRow]]:
    connection = psycopg.connect(dsn)
    try:
        yield connection
    finally:
        connection.close()
