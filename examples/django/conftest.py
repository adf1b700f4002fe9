"""The Django example's tests run on a fresh database from pgqueue's pytest plugin (one per test
process), with the project's tables created by Django."""

import os

import pytest

from pgqueue.testing import TestDatabase, fresh_database


@pytest.fixture(scope="session")
def shop_db(pgqueue_server_dsn: str):
    import django
    from django.core.management import call_command
    from django.db import connections

    with fresh_database(pgqueue_server_dsn) as db:
        os.environ["DJANGOSHOP_DATABASE_URL"] = db.dsn
        os.environ["DJANGO_SETTINGS_MODULE"] = "djangoshop.settings"
        django.setup()
        call_command("migrate", run_syncdb=True, verbosity=0)
        yield db
        connections.close_all()


@pytest.fixture
def shop(shop_db: TestDatabase) -> TestDatabase:
    return shop_db
