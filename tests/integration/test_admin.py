"""The stores' administrative methods (what `pgqueue jobs|queues|stats` run) on a real database.

Tests share one migrated database per module and each runs in a transaction that is rolled back
at the end (``tx``): reads see the test's own uncommitted writes, and no test sees another's.
Creating a database per test costs more than most of these tests; the NOTIFY test, which must
commit, takes its own database (``dsn``/``conn``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

from pgqueue import App
from pgqueue._db.audit import AuditStore
from pgqueue._db.jobs import JobStore, Outcome
from pgqueue._db.queues import QueueStore
from pgqueue._db.server import ServerStore
from pgqueue._db.sessions import connect
from pgqueue._db.workers import WorkerStore
from pgqueue.errors import DatabaseUnavailable, InvalidDSN
from tests.helpers import scratch_database

ACTOR = "cli:tester"
Conn = psycopg.Connection[TupleRow]


@pytest.fixture(scope="module")
def module_dsn(pg_server_dsn: str, template_db: str) -> Iterator[str]:
    with scratch_database(pg_server_dsn, template_db) as database_dsn:
        yield database_dsn


@pytest.fixture
def tx(module_dsn: str) -> Iterator[Conn]:
    """A connection to the module's database whose transaction is rolled back after the test."""
    with psycopg.connect(module_dsn) as connection:
        try:
            yield connection
        finally:
            connection.rollback()


def enqueue(conn: Conn, task: str = "t", queue: str = "default", **options: Any) -> int:
    return App().enqueue(conn, task, {"n": 1}, queue=queue, **options)


def force_state(conn: Conn, job_id: int, state: str, *, attempt: int = 1) -> str | None:
    """Put a job straight into ``state``, as a worker would have; returns the lease token for running jobs."""
    token = str(uuid.uuid4()) if state == "running" else None
    conn.execute(
        """UPDATE pgqueue.jobs SET state = %(state)s, attempt = %(attempt)s, lease_token = %(token)s::uuid,
                  worker_id = CASE WHEN %(state)s = 'running' THEN 'w-test' END,
                  finished_at = CASE WHEN %(state)s IN ('completed', 'failed', 'cancelled') THEN now() END
           WHERE id = %(id)s""",
        {"state": state, "attempt": attempt, "token": token, "id": job_id},
    )
    return token


def events(conn: Conn, job_id: int | None = None) -> list[tuple[Any, ...]]:
    """(event, from_state, to_state, actor, detail) of a job's audit rows, or of queue-level rows (job_id NULL)."""
    return conn.execute(
        "SELECT event, from_state, to_state, actor, detail FROM pgqueue.job_events "
        "WHERE job_id IS NOT DISTINCT FROM %s ORDER BY id", [job_id]
    ).fetchall()


def state_of(conn: Conn, job_id: int) -> str | None:
    row = conn.execute("SELECT state FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone()
    return row[0] if row else None


def test_get_job_returns_every_contract_column_and_none_for_an_unknown_id(tx: Conn) -> None:
    store = JobStore(tx)
    job_id = enqueue(tx, "send-email", "emails", priority="high", tags=["billing"], unique_key="k1")

    job = store.get_job(job_id)

    assert job is not None
    assert {"id", "task", "queue", "state", "priority", "args", "attempt", "max_attempts", "run_at", "enqueued_at",
            "started_at", "finished_at", "progress", "progress_note", "result", "last_error", "unique_key", "tags",
            "worker_id"} <= set(job)
    assert (job["task"], job["queue"], job["state"], job["priority"]) == ("send-email", "emails", "available", 25)
    assert (job["args"], job["tags"], job["unique_key"]) == ({"n": 1}, ["billing"], "k1")
    assert store.get_job(job_id + 1000) is None


def test_retry_of_a_failed_job_makes_it_available_with_one_more_attempt_and_audits_the_actor(tx: Conn) -> None:
    store = JobStore(tx)
    job_id = enqueue(tx, max_attempts=3)
    force_state(tx, job_id, "failed", attempt=3)

    assert store.retry_jobs([job_id], None, only_failed=False, actor=ACTOR).retried == [job_id]

    job = store.get_job(job_id)
    assert job is not None
    assert (job["state"], job["finished_at"], job["max_attempts"]) == ("available", None, 4)
    assert events(tx, job_id)[-1][:4] == ("retried", "failed", "available", ACTOR)


@pytest.mark.parametrize("state", ["scheduled", "available", "running", "completed"])
def test_retry_leaves_jobs_that_are_not_failed_or_cancelled_alone(tx: Conn, state: str) -> None:
    store = JobStore(tx)
    job_id = enqueue(tx)
    force_state(tx, job_id, state)

    assert store.retry_jobs([job_id], None, only_failed=False, actor=ACTOR).retried == []
    assert state_of(tx, job_id) == state
    assert [e[0] for e in events(tx, job_id)] == ["enqueued"]


def test_retry_of_every_failed_job_in_one_queue_skips_other_queues_and_cancelled_jobs(tx: Conn) -> None:
    store = JobStore(tx)
    failed_a = [enqueue(tx, queue="a") for _ in range(2)]
    cancelled_a, failed_b = enqueue(tx, queue="a"), enqueue(tx, queue="b")
    for job_id in [*failed_a, failed_b]:
        force_state(tx, job_id, "failed")
    force_state(tx, cancelled_a, "cancelled")

    assert store.retry_jobs(None, "a", only_failed=True, actor=ACTOR) == (failed_a, [])

    assert [state_of(tx, j) for j in (*failed_a, cancelled_a, failed_b)] == [
        "available", "available", "cancelled", "failed"]
    assert store.retry_jobs(None, None, only_failed=True, actor=ACTOR) == ([failed_b], [])


@pytest.mark.parametrize("state", ["scheduled", "available", "running"])
def test_cancel_of_a_live_job_reports_its_previous_state_and_audits_the_actor(tx: Conn, state: str) -> None:
    store = JobStore(tx)
    job_id = enqueue(tx)
    force_state(tx, job_id, state)

    assert store.cancel_job(job_id, ACTOR) == (state, True)

    assert state_of(tx, job_id) == "cancelled"
    assert events(tx, job_id)[-1][:4] == ("cancelled", state, "cancelled", ACTOR)


@pytest.mark.parametrize("state", ["completed", "failed", "cancelled"])
def test_cancel_of_a_finished_job_changes_nothing(tx: Conn, state: str) -> None:
    store = JobStore(tx)
    job_id = enqueue(tx)
    force_state(tx, job_id, state)

    assert store.cancel_job(job_id, ACTOR) == (state, False)
    assert state_of(tx, job_id) == state
    assert store.cancel_job(job_id + 1000, ACTOR) == (None, False)


def test_a_cancelled_running_job_refuses_its_workers_late_completion(tx: Conn) -> None:
    store = JobStore(tx)
    job_id = enqueue(tx)
    token = force_state(tx, job_id, "running")
    assert token is not None
    store.cancel_job(job_id, ACTOR)

    assert store.complete_jobs([Outcome(job_id=job_id, token=token, state="completed", result='{"ok": true}')]) == set()
    job = store.get_job(job_id)
    assert job is not None
    assert (job["state"], job["result"]) == ("cancelled", None)


def test_delete_removes_a_finished_job_but_never_a_running_one_and_keeps_the_trail(tx: Conn) -> None:
    store = JobStore(tx)
    done, running = enqueue(tx), enqueue(tx)
    force_state(tx, done, "completed")
    force_state(tx, running, "running")

    assert store.delete_job(done, ACTOR) is True
    assert store.delete_job(running, ACTOR) is False
    assert store.delete_job(done, ACTOR) is False

    assert store.get_job(done) is None
    assert state_of(tx, running) == "running"
    assert events(tx, done)[-1][:4] == ("deleted", "completed", None, ACTOR)
    assert [e["event"] for e in AuditStore(tx).list_job_events(done)] == ["enqueued", "deleted"]


def test_purge_deletes_one_queues_jobs_by_state_never_running_ones_and_audits_each(tx: Conn) -> None:
    store = JobStore(tx)
    failed, completed, running = (enqueue(tx, queue="a") for _ in range(3))
    other_queue = enqueue(tx, queue="b")
    force_state(tx, failed, "failed")
    force_state(tx, completed, "completed")
    force_state(tx, running, "running")
    force_state(tx, other_queue, "failed")

    assert store.purge_queue("a", "failed", ACTOR) == 1
    assert (state_of(tx, failed), state_of(tx, completed)) == (None, "completed")

    assert store.purge_queue("a", None, ACTOR) == 1
    assert (state_of(tx, completed), state_of(tx, running), state_of(tx, other_queue)) == (
        None, "running", "failed")
    purged = events(tx, failed)[-1]
    assert purged[:4] == ("purged", "failed", None, ACTOR)
    assert purged[4] == {"queue": "a"}
    assert store.purge_queue("nothing-here", None, ACTOR) == 0


def test_pause_and_resume_show_in_queue_stats_and_write_queue_level_audit_rows(tx: Conn) -> None:
    store = QueueStore(tx)
    enqueue(tx, queue="emails")

    store.set_queue_paused("emails", True, ACTOR)
    assert [(q["queue"], q["paused"]) for q in store.queue_stats()] == [("emails", True)]
    store.set_queue_paused("reports", True, ACTOR)  # a queue with no jobs yet can be paused too
    store.set_queue_paused("emails", False, ACTOR)

    assert {q["queue"]: q["paused"] for q in store.queue_stats()} == {"emails": False, "reports": True}
    assert events(tx, None) == [
        ("queue_paused", None, None, ACTOR, {"queue": "emails"}),
        ("queue_paused", None, None, ACTOR, {"queue": "reports"}),
        ("queue_resumed", None, None, ACTOR, {"queue": "emails"}),
    ]


def test_resuming_a_queue_notifies_listening_workers_on_commit(dsn: str, conn: Conn) -> None:
    store = QueueStore(conn)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgqueue_jobs")
        store.set_queue_paused("emails", False, ACTOR)
        assert list(listener.notifies(timeout=0.2, stop_after=1)) == []  # NOTIFY waits for COMMIT
        conn.commit()
        received = list(listener.notifies(timeout=5, stop_after=1))
    assert [(n.channel, n.payload) for n in received] == [("pgqueue_jobs", "emails")]


def test_queue_stats_counts_jobs_per_state_and_the_age_of_the_oldest_available_job(tx: Conn) -> None:
    store = QueueStore(tx)
    old, _new, failed = (enqueue(tx, queue="a") for _ in range(3))
    enqueue(tx, queue="a", delay=3600)
    force_state(tx, failed, "failed")
    tx.execute("UPDATE pgqueue.jobs SET run_at = now() - interval '90 seconds' WHERE id = %s", [old])

    (row,) = store.queue_stats()

    assert {k: row[k] for k in ("queue", "paused", "scheduled", "available", "running", "completed", "failed",
                                "cancelled")} == {
        "queue": "a", "paused": False, "scheduled": 1, "available": 2, "running": 0, "completed": 0, "failed": 1,
        "cancelled": 0}
    assert 90 <= row["oldest_available_seconds"] < 150


def test_notification_queue_usage_is_a_fraction_of_the_server_queue(tx: Conn) -> None:
    usage = ServerStore(tx).notification_queue_usage()
    assert isinstance(usage, float)
    assert 0.0 <= usage < 0.5


def test_list_workers_marks_workers_whose_lease_expired_as_not_alive(tx: Conn) -> None:
    store = WorkerStore(tx)
    for worker_id, lease in (("live", 60), ("dead", -60)):
        store.heartbeat_worker({"id": worker_id, "hostname": "h", "pid": 1, "queues": ["a"], "concurrency": 2,
                                "lease_seconds": lease})

    assert {w["id"]: w["alive"] for w in store.list_workers()} == {"live": True, "dead": False}


def test_list_job_events_returns_one_jobs_trail_in_the_order_it_happened(tx: Conn) -> None:
    store = JobStore(tx)
    job_id, other = enqueue(tx), enqueue(tx)
    force_state(tx, job_id, "failed")
    store.retry_jobs([job_id], None, only_failed=False, actor=ACTOR)
    store.cancel_job(job_id, ACTOR)
    store.cancel_job(other, ACTOR)

    trail = AuditStore(tx).list_job_events(job_id)

    assert [e["event"] for e in trail] == ["enqueued", "retried", "cancelled"]
    assert [e["id"] for e in trail] == sorted(e["id"] for e in trail)
    assert {e["job_id"] for e in trail} == {job_id}
    assert set(trail[0]) == {"id", "job_id", "at", "event", "from_state", "to_state", "attempt", "worker_id",
                             "actor", "detail", "seal_no"}
    assert {e["seal_no"] for e in trail} == {None}  # nothing sealed it yet


@pytest.mark.parametrize(("dsn_text", "error", "shown"), [
    ("postgresql://root:s3cret-pw@127.0.0.1:1/postgres", DatabaseUnavailable,
     "cannot connect to postgresql://root:***@127.0.0.1:1/postgres: "),
    ("host=127.0.0.1 port=1 user=root password=s3cret-pw", DatabaseUnavailable, "password=***"),
    ("postgresql://root:s3cret-pw@127.0.0.1:notaport/postgres", DatabaseUnavailable,
     "postgresql://root:***@127.0.0.1:notaport/postgres"),
    ("postgresql://root:s3cret-pw@127.0.0.1/postgres?bogus=1", InvalidDSN, "is not a valid PostgreSQL DSN"),
])
def test_connect_names_the_dsn_without_its_password_when_it_cannot_connect(
        dsn_text: str, error: type[Exception], shown: str) -> None:
    with pytest.raises(error) as raised:
        connect(dsn_text)

    assert shown in str(raised.value)
    assert "s3cret-pw" not in str(raised.value)
    assert raised.value.__cause__ is None  # nothing further down to print with a traceback
