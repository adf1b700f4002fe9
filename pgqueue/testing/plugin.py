"""The pytest plugin (entry point ``pytest11``: ``pgqueue``), loaded by pytest when pgqueue is installed.

Fixtures:

- ``pgqueue_server_dsn`` (session): the server test databases are made on (``PGQUEUE_TEST_DSN``,
  else the embedded server).
- ``pgqueue_db``: a :class:`pgqueue.testing.TestDatabase`, a fresh database at pgqueue's head for
  the test, dropped afterwards (with every session still connected to it). Apps it was bound to
  get their own DSN back.

Nothing happens unless a test asks for a fixture.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgqueue.testing import TestDatabase, fresh_database, server_dsn


@pytest.fixture(scope="session")
def pgqueue_server_dsn() -> str:
    """The PostgreSQL server that test databases are created on."""
    return server_dsn()


@pytest.fixture
def pgqueue_db(pgqueue_server_dsn: str) -> Iterator[TestDatabase]:
    """A fresh database at pgqueue's migration head for this test (see :class:`pgqueue.testing.TestDatabase`)."""
    with fresh_database(pgqueue_server_dsn) as database:
        yield database
