"""``pgqueue.encrypted_tasks``: a worker records at start which of its code's tasks are declared
``encrypt=True``, and ``pgqueue.enqueue()`` (SQL, which cannot encrypt) refuses those tasks.

Without it, only ``App.enqueue`` knew a task's ``encrypt=True``: SQL enqueue stored the task's args
in plaintext.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

from pgqueue import App, Job, Worker
from pgqueue._crypto import generate_key
from pgqueue.settings import Settings

Conn = psycopg.Connection[TupleRow]
KEY = generate_key()
REFUSED = ("pgqueue.enqueue: task 'verify-ssn' is declared encrypt=True, and SQL enqueue cannot encrypt: "
           "enqueue it from Python or with pgqueue enqueue")


def app_version(dsn: str, *, encrypt: bool) -> App:
    """The application's code: ``verify-ssn`` declared with or without ``encrypt=True``."""
    app = App(dsn, settings=Settings(dsn=dsn, lease_seconds=5, poll_seconds=0.2, shutdown_grace_seconds=5,
                                     encryption_keys=(KEY,)))

    @app.task(name="verify-ssn", encrypt=encrypt)
    def verify_ssn(job: Job, ssn: str) -> None: ...

    @app.task(name="send-email")
    def send_email(job: Job, to: str) -> None: ...

    return app


def start_worker(app: App) -> None:
    """A worker of ``app`` that starts, runs what is left and stops."""
    assert Worker(app, concurrency=2, settings=app.settings).run_until_empty() == 0


def encrypted_tasks(conn: Conn) -> list[str]:
    return [row[0] for row in conn.execute("SELECT task FROM pgqueue.encrypted_tasks ORDER BY task").fetchall()]


def sql_enqueue(dsn: str, task: str, args: str) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pgqueue.enqueue(%s, %s::jsonb)", [task, args]).fetchone()
    assert row is not None
    return row[0]


def test_a_started_worker_records_its_encrypted_tasks_and_the_next_version_without_encrypt_removes_them(
        dsn: str, conn: Conn) -> None:
    conn.execute("INSERT INTO pgqueue.encrypted_tasks (task) VALUES ('declared-by-another-service')")
    conn.commit()
    start_worker(app_version(dsn, encrypt=True))
    assert encrypted_tasks(conn) == ["declared-by-another-service", "verify-ssn"]
    declared_at = conn.execute("SELECT declared_at FROM pgqueue.encrypted_tasks WHERE task = 'verify-ssn'").fetchone()
    conn.commit()

    start_worker(app_version(dsn, encrypt=True))  # a restart changes nothing
    assert conn.execute("SELECT declared_at FROM pgqueue.encrypted_tasks WHERE task = 'verify-ssn'").fetchone() == (
        declared_at)
    conn.commit()

    start_worker(app_version(dsn, encrypt=False))
    # A task this code does not declare keeps its row: another service's workers may declare it.
    assert encrypted_tasks(conn) == ["declared-by-another-service"]


def test_sql_enqueue_refuses_a_task_declared_encrypt_true_and_writes_nothing(dsn: str, conn: Conn) -> None:
    start_worker(app_version(dsn, encrypt=True))

    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        sql_enqueue(dsn, "verify-ssn", '{"ssn": "123-45-6789"}')
    assert refused.value.diag.message_primary == REFUSED
    assert conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM pgqueue.job_events").fetchone() == (0,)

    # A plaintext task still enqueues from SQL, and Python still enqueues the encrypted one.
    plain = sql_enqueue(dsn, "send-email", '{"to": "a@example.com"}')
    sealed = app_version(dsn, encrypt=True).enqueue(None, "verify-ssn", {"ssn": "123-45-6789"})
    rows: dict[int, bool] = dict(
        conn.execute("SELECT id, args IS NULL AND args_encrypted IS NOT NULL FROM pgqueue.jobs").fetchall())
    assert rows == {plain: False, sealed: True}


def test_sql_enqueue_takes_the_task_again_once_its_workers_no_longer_declare_encrypt(dsn: str, conn: Conn) -> None:
    start_worker(app_version(dsn, encrypt=True))
    start_worker(app_version(dsn, encrypt=False))
    job_id = sql_enqueue(dsn, "verify-ssn", '{"ssn": "1"}')
    assert conn.execute("SELECT args FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone() == ({"ssn": "1"},)
