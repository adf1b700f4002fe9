"""Testing an application that uses pgqueue, on a real PostgreSQL (never a fake).

:class:`TestDatabase` is a fresh database migrated to pgqueue's head, on the server named by
``PGQUEUE_TEST_DSN`` (a role that may create databases) or else the embedded server. It runs an
app's jobs in-process until none is left (:meth:`TestDatabase.drain`) and asserts on what was
enqueued (:meth:`TestDatabase.assert_enqueued`).

With pytest, the plugin pgqueue registers (entry point ``pytest11``) gives the fixture
``pgqueue_db``: one such database per test, dropped afterwards. Without pytest::

    with pgqueue.testing.fresh_database() as db:
        db.bind(app)
        ...

Example:
    >>> def test_signup_sends_a_welcome_email(pgqueue_db):
    ...     pgqueue_db.bind(app)
    ...     signup(email="a@example.com")                 # enqueues send-welcome
    ...     pgqueue_db.assert_enqueued("send-welcome", args={"to": "a@example.com"})
    ...     assert pgqueue_db.drain(app).failed == 0
"""

from pgqueue.testing._database import (
    Drained,
    TestDatabase,
    fresh_database,
    server_dsn,
    template_database,
)

__all__ = ["Drained", "TestDatabase", "fresh_database", "server_dsn", "template_database"]
