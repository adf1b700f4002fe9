"""An application with its own alembic setup runs pgqueue's migrations on its own connection."""

from __future__ import annotations

import sqlalchemy as sa

import pgqueue.migrations
from pgqueue import _migrate


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
    assert ours == ["0013"]
    assert pgqueue.migrations.pending(empty_dsn) == []


def test_upgrade_with_a_dsn_commits_by_itself(empty_dsn: str) -> None:
    assert sorted(pgqueue.migrations.pending(empty_dsn)) == [
        "0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009", "0010", "0011", "0012", "0013"]
    pgqueue.migrations.upgrade(empty_dsn)
    assert pgqueue.migrations.pending(empty_dsn) == []
