"""An application with its own alembic setup runs pgqueue's migrations on its own connection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

import pgqueue.migrations
from pgqueue import _migrate
from pgqueue.settings import normalize_dsn


def test_upgrade_on_the_apps_connection_joins_its_transaction_and_keeps_its_own_version_table(
    empty_dsn: str,
) -> None:
    engine = _migrate.create_engine(empty_dsn)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)"))
            connection.execute(sa.text("INSERT INTO alembic_version VALUES ('app0001')"))
            pgqueue.migrations.upgrade(connection)
            # Rolled back with the app's transaction: nothing of pgqueue's DDL survives.
            connection.rollback()
            assert connection.execute(sa.text("SELECT to_regclass('pgqueue.jobs')")).scalar() is None

            connection.execute(sa.text("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)"))
            connection.execute(sa.text("INSERT INTO alembic_version VALUES ('app0001')"))
            pgqueue.migrations.upgrade(connection)
            connection.commit()
            assert connection.execute(sa.text("SELECT to_regclass('pgqueue.jobs')")).scalar() is not None
            app_versions = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
            ours = connection.execute(sa.text("SELECT version_num FROM pgqueue_alembic_version")).scalars().all()
    finally:
        engine.dispose()
    assert app_versions == ["app0001"]
    assert ours == ["0016"]
    assert pgqueue.migrations.pending(empty_dsn) == []


def test_upgrade_with_a_dsn_commits_by_itself(empty_dsn: str) -> None:
    assert sorted(pgqueue.migrations.pending(empty_dsn)) == [
        "0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009", "0010", "0011", "0012", "0013", "0014",
        "0015", "0016"]
    pgqueue.migrations.upgrade(empty_dsn)
    assert pgqueue.migrations.pending(empty_dsn) == []


_APP_ENV_PY = '''
import os

import pgqueue.migrations
import sqlalchemy as sa
from alembic import context

connectable = sa.create_engine(os.environ["APP_DATABASE_URL"], poolclass=sa.pool.NullPool)
with connectable.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
        pgqueue.migrations.upgrade(PGQUEUE_TARGET)
'''

_APP_REVISION = '''
from alembic import op

revision = "app0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.execute("CREATE TABLE orders (id bigint PRIMARY KEY)")


def downgrade():
    op.execute("DROP TABLE orders")
'''


@pytest.mark.parametrize("target", [
    "connection",  # as docs/operations/migrations.md shows: in the app's transaction
    'os.environ["APP_DATABASE_URL"]',  # a DSN: pgqueue's own connection and transaction
])
def test_the_apps_own_alembic_command_runs_pgqueues_migrations_from_its_env_py(
    tmp_path: Path, empty_dsn: str, target: str,
) -> None:
    # The documented env.py runs pgqueue's alembic command inside the app's: the app's `alembic
    # upgrade head` used to die with KeyError: 'script' once pgqueue's command had finished.
    (tmp_path / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    (tmp_path / "migrations" / "versions").mkdir(parents=True)
    (tmp_path / "migrations" / "env.py").write_text(_APP_ENV_PY.replace("PGQUEUE_TARGET", target))
    (tmp_path / "migrations" / "versions" / "app0001_orders.py").write_text(_APP_REVISION)
    url = "postgresql+psycopg://" + normalize_dsn(empty_dsn).removeprefix("postgresql://")
    for _ in range(2):  # the second run has nothing left to do
        ran = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "heads"], cwd=tmp_path,
                             env={**os.environ, "APP_DATABASE_URL": url},
                             capture_output=True, text=True, timeout=120, check=False)
        assert ran.returncode == 0, ran.stderr
        assert "Traceback" not in ran.stderr
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("app0001",)]
        assert conn.execute("SELECT version_num FROM pgqueue_alembic_version").fetchall() == [("0016",)]
        assert conn.execute("SELECT to_regclass('public.orders') IS NOT NULL, "
                            "to_regclass('pgqueue.jobs') IS NOT NULL").fetchone() == (True, True)
