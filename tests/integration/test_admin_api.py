"""pgqueue.admin, the public conn-first admin API, on a real database.

Most tests share one database and run in a transaction rolled back at the end (``tx``); tests
that need commits (paging under inserts, wait_for_job with a worker) take a database of their own.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from pgqueue import App, Discard, Job, Worker, admin
from pgqueue._db.jobs import AsyncJobStore, Outcome
from pgqueue._db.notifications import DONE_CHANNEL, WAITERS_LOCK_KEY
from pgqueue.errors import (
    ConfigurationError,
    InvalidFilter,
    InvalidJobState,
    InvalidQueueLimits,
    InvalidQueueName,
    JobNotFound,
    JobWaitTimeout,
    QueueNotFound,
)
from pgqueue.settings import Settings
from tests.helpers import scratch_database, sqlalchemy_form, wait_until

Conn = psycopg.Connection[TupleRow]


@pytest.fixture(scope="module")
def module_dsn(pg_server_dsn: str, template_db: str) -> Iterator[str]:
    with scratch_database(pg_server_dsn, template_db) as database_dsn:
        yield database_dsn


@pytest.fixture
def tx(module_dsn: str) -> Iterator[Conn]:
    with psycopg.connect(module_dsn) as connection:
        try:
            yield connection
        finally:
            connection.rollback()


def enqueue(conn: Conn, task: str = "t", queue: str = "default", **options: Any) -> int:
    return App().enqueue(conn, task, {"n": 1}, queue=queue, **options)


def force_state(conn: Conn, job_id: int, state: str) -> None:
    # On a cursor of psycopg's default class: some tests' connections have another cursor_factory.
    psycopg.Cursor(conn).execute("""UPDATE pgqueue.jobs SET state = %(state)s, attempt = 1,
                    lease_token = CASE WHEN %(state)s = 'running' THEN gen_random_uuid() END,
                    worker_id = CASE WHEN %(state)s = 'running' THEN 'w-test' END,
                    finished_at = CASE WHEN %(state)s IN ('completed', 'failed', 'cancelled') THEN now() END
                    WHERE id = %(id)s""", {"state": state, "id": job_id})


def audit(conn: Conn, event: str, job_id: int | None = None) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT actor, detail FROM pgqueue.job_events WHERE event = %s "
                        "AND job_id IS NOT DISTINCT FROM %s ORDER BY id", [event, job_id]).fetchall()


def state_of(conn: Conn, job_id: int) -> str | None:
    row = psycopg.Cursor(conn).execute("SELECT state FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone()
    return row[0] if row else None


# --- jobs ---


def test_get_job_returns_a_typed_record_and_raises_job_not_found_for_an_unknown_id(tx: Conn) -> None:
    job_id = enqueue(tx, "send-email", "emails", tags=["billing"], priority="high")

    job = admin.get_job(tx, job_id)

    assert (job.id, job.task, job.queue, job.state, job.priority, job.tags) == (
        job_id, "send-email", "emails", "available", 25, ("billing",))
    assert job.args == {"n": 1}
    assert not job.encrypted
    assert not job.finished
    with pytest.raises(JobNotFound, match="job 424242 not found"):
        admin.get_job(tx, 424242)


def test_list_jobs_filters_by_queue_task_state_tag_and_since(tx: Conn) -> None:
    a = enqueue(tx, "send-email", "emails", tags=["vip"])
    b = enqueue(tx, "send-email", "emails")
    c = enqueue(tx, "render", "reports", tags=["vip"])
    force_state(tx, b, "failed")
    tx.execute("UPDATE pgqueue.jobs SET enqueued_at = now() - interval '2 days' WHERE id = %s", [c])

    def ids(**filters: Any) -> list[int]:
        return [job.id for job in admin.list_jobs(tx, **filters).items if job.id in (a, b, c)]

    assert ids() == [c, b, a]
    assert ids(queue="emails") == [b, a]
    assert ids(task="render") == [c]
    assert ids(state="failed") == [b]
    assert ids(tag="vip") == [c, a]
    assert ids(since=datetime.now(UTC) - timedelta(days=1)) == [b, a]
    assert ids(queue="emails", state="available") == [a]


@pytest.mark.parametrize(("filters", "message"), [
    ({"state": "done"}, "state 'done' is not valid here"),
    ({"limit": 0}, "limit 0 must be between 1 and 1000"),
    ({"limit": 5000}, "limit 5000 must be between 1 and 1000"),
    ({"cursor": "not-a-cursor"}, "cursor 'not-a-cursor' is not one this API returned"),
    ({"since": datetime(2030, 1, 1)}, "must be a timezone-aware datetime"),  # noqa: DTZ001 - the point
    ({"task": ""}, "task '' must be a non-empty string"),
])
def test_list_jobs_refuses_a_malformed_filter_with_a_typed_error(tx: Conn, filters: dict[str, Any],
                                                                 message: str) -> None:
    with pytest.raises(InvalidFilter, match=message):
        admin.list_jobs(tx, **filters)
    with pytest.raises(InvalidQueueName):
        admin.list_jobs(tx, queue="Bad Queue")


def test_cursor_paging_has_no_duplicates_or_gaps_while_jobs_are_inserted(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        existing = App().enqueue_many(conn, [admin_spec(i) for i in range(230)])
        seen: list[int] = []
        cursor: str | None = None
        pages = 0
        while True:
            page = admin.list_jobs(conn, cursor=cursor, limit=50)
            seen += [job.id for job in page.items]
            pages += 1
            App().enqueue_many(conn, [admin_spec(i) for i in range(7)])  # newer jobs land above the cursor
            cursor = page.next_cursor
            if cursor is None:
                break

    assert seen == sorted(existing, reverse=True)
    assert pages == 5


def admin_spec(i: int) -> Any:
    from pgqueue import JobSpec

    return JobSpec("t", {"i": i})


def test_a_rare_filter_pages_by_bounded_scans_and_still_finds_every_match(dsn: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "SCAN_BUDGET", 40)
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = App().enqueue_many(conn, [admin_spec(i) for i in range(200)])
        rare = set(ids[5::60])
        conn.execute("UPDATE pgqueue.jobs SET task = 'rare' WHERE id = ANY(%s)", [list(rare)])
        found: list[int] = []
        scanned: list[int] = []
        cursor: str | None = None
        while True:
            page = admin.list_jobs(conn, task="rare", cursor=cursor, limit=10)
            found += [job.id for job in page.items]
            scanned.append(page.scanned)
            cursor = page.next_cursor
            if cursor is None:
                break

    assert found == sorted(rare, reverse=True)
    assert max(scanned) <= 40  # no page read more than its budget
    assert len(scanned) >= 5


def test_retry_job_makes_a_failed_job_available_and_audits_the_actor(tx: Conn) -> None:
    job_id = enqueue(tx)
    force_state(tx, job_id, "failed")

    change = admin.retry_job(tx, job_id, actor="alice")

    assert change == admin.JobChange(job_id, "failed", "available")
    assert state_of(tx, job_id) == "available"
    assert audit(tx, "retried", job_id) == [("alice", {"source": "api"})]


def test_actions_default_to_the_os_user_as_actor(tx: Conn) -> None:
    job_id = enqueue(tx)

    admin.cancel_job(tx, job_id)

    assert audit(tx, "cancelled", job_id) == [(admin.default_actor(), {"source": "api"})]


@pytest.mark.parametrize("state", ["available", "running", "completed"])
def test_retry_job_refuses_a_job_that_is_not_failed_or_cancelled(tx: Conn, state: str) -> None:
    job_id = enqueue(tx)
    force_state(tx, job_id, state)

    with pytest.raises(InvalidJobState, match=f"job {job_id} is {state}; only failed or cancelled"):
        admin.retry_job(tx, job_id)
    assert state_of(tx, job_id) == state
    with pytest.raises(JobNotFound):
        admin.retry_job(tx, 999_999)


def test_retry_failed_retries_one_queues_dead_letters_only(tx: Conn) -> None:
    mine, other, cancelled = enqueue(tx, queue="a"), enqueue(tx, queue="b"), enqueue(tx, queue="a")
    for job_id, state in ((mine, "failed"), (other, "failed"), (cancelled, "cancelled")):
        force_state(tx, job_id, state)

    assert admin.retry_failed(tx, queue="a", actor="bob") == [mine]
    assert admin.retry_failed(tx, queue="a", actor="bob").skipped == []
    assert [state_of(tx, j) for j in (mine, other, cancelled)] == ["available", "failed", "cancelled"]


def test_retry_job_refuses_a_unique_job_whose_key_a_live_job_holds_again(tx: Conn) -> None:
    # Once a unique job is dead, its key is free: a new job may take it. Retrying the dead one then
    # made a second live job with that key, which the unique index refused with psycopg's
    # UniqueViolation (and the caller's transaction was left aborted).
    dead = enqueue(tx, unique_key="report-7")
    force_state(tx, dead, "failed")
    live = enqueue(tx, unique_key="report-7")

    with pytest.raises(InvalidJobState, match=f"unique_key 'report-7'.*live job {live}"):
        admin.retry_job(tx, dead)
    assert (state_of(tx, dead), state_of(tx, live)) == ("failed", "available")
    tx.execute("SELECT 1")  # the caller's transaction is still usable


def test_retry_failed_leaves_dead_jobs_whose_unique_key_is_live_again_and_retries_the_rest(tx: Conn) -> None:
    dead = []
    for key in ("k1", "k2", "k2", None):  # one at a time: a live job's key would be shared, not taken
        dead.append(enqueue(tx, queue="u", unique_key=key))
        force_state(tx, dead[-1], "failed")
    taken, older, newer, plain = dead
    live = enqueue(tx, queue="u", unique_key="k1")

    # Two dead jobs of one key: only the newest comes back (both would be two live jobs of one key).
    retried = admin.retry_failed(tx, queue="u")
    assert retried == [newer, plain]
    # The ones left failed are reported, not silently left behind.
    assert retried.skipped == [taken, older]
    assert retried.as_dict() == {"retried": [newer, plain], "count": 2, "skipped": [taken, older], "skipped_count": 2}
    assert [state_of(tx, j) for j in (taken, older, newer, plain, live)] == [
        "failed", "failed", "available", "available", "available"]
    assert admin.retry_failed(tx, queue="u").skipped == [taken, older]  # still left on a second run


def test_cancel_and_delete_raise_typed_errors_and_change_nothing_when_refused(tx: Conn) -> None:
    finished, running = enqueue(tx), enqueue(tx)
    force_state(tx, finished, "completed")
    force_state(tx, running, "running")

    with pytest.raises(InvalidJobState, match="is completed; only waiting, scheduled, available or running"):
        admin.cancel_job(tx, finished)
    with pytest.raises(InvalidJobState, match="a running job cannot be deleted: cancel it first"):
        admin.delete_job(tx, running)
    with pytest.raises(JobNotFound):
        admin.cancel_job(tx, 999_999)
    assert (state_of(tx, finished), state_of(tx, running)) == ("completed", "running")
    assert admin.delete_job(tx, finished, actor="carol") == admin.JobChange(finished, "completed", None)
    assert state_of(tx, finished) is None
    assert audit(tx, "deleted", finished) == [("carol", {"source": "api"})]


def test_actions_run_in_the_callers_transaction_and_vanish_with_its_rollback(module_dsn: str) -> None:
    with psycopg.connect(module_dsn) as conn:
        job_id = enqueue(conn)
        force_state(conn, job_id, "failed")
        conn.commit()
        admin.retry_job(conn, job_id, actor="dave")
        admin.pause_queue(conn, "default", actor="dave")
        conn.rollback()

        assert state_of(conn, job_id) == "failed"
        assert audit(conn, "retried", job_id) == []
        assert not next(q for q in admin.list_queues(conn) if q.name == "default").paused


def test_admin_functions_accept_a_sqlalchemy_session(module_dsn: str) -> None:
    engine = create_engine(module_dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with Session(engine) as session:
            job_id = App().enqueue(session, "t", {})
            assert admin.get_job(session, job_id).state == "available"
            assert admin.cancel_job(session, job_id, actor="erin").state == "cancelled"
            session.rollback()
    finally:
        engine.dispose()


@pytest.mark.parametrize("cursor_factory", [psycopg.RawCursor, psycopg.ClientCursor],
                         ids=["RawCursor", "ClientCursor"])
def test_admin_functions_run_whatever_the_connections_cursor_factory(
        module_dsn: str, cursor_factory: type[psycopg.Cursor[Any]]) -> None:
    # pgqueue's statements use %(name)s placeholders: on a RawCursor connection each admin call
    # failed with "raw queries require a sequence of parameters".
    with psycopg.connect(module_dsn, cursor_factory=cursor_factory) as conn:
        try:
            job_id = enqueue(conn, queue="cursors")
            force_state(conn, job_id, "failed")

            assert admin.get_job(conn, job_id).state == "failed"
            assert [job.id for job in admin.list_jobs(conn, queue="cursors").items] == [job_id]
            assert admin.retry_failed(conn, queue="cursors", actor="frank") == [job_id]
            assert admin.cancel_job(conn, job_id, actor="frank").state == "cancelled"
            assert [e.event for e in admin.list_job_events(conn, job_id)] == ["enqueued", "retried", "cancelled"]
            assert admin.pause_queue(conn, "cursors", actor="frank").paused
            assert next(q for q in admin.list_queues(conn) if q.name == "cursors").paused
            assert isinstance(admin.list_workers(conn), list)
        finally:
            conn.rollback()


# --- queues ---


def test_pause_resume_and_list_queues_with_counts_lag_and_audit(tx: Conn) -> None:
    enqueue(tx, queue="q1")
    failed = enqueue(tx, queue="q1")
    force_state(tx, failed, "failed")
    tx.execute("UPDATE pgqueue.jobs SET run_at = now() - interval '30 seconds' "
               "WHERE queue = 'q1' AND state = 'available'")

    paused = admin.pause_queue(tx, "q1", actor="frank")
    resumed = admin.resume_queue(tx, "q1", actor="frank")

    assert paused.paused
    assert not resumed.paused
    assert (resumed.available, resumed.failed, resumed.failed_last_hour) == (1, 1, 1)
    assert resumed.lag_seconds is not None
    assert resumed.lag_seconds >= 29
    assert audit(tx, "queue_paused") == [("frank", {"queue": "q1", "source": "api"})]
    assert audit(tx, "queue_resumed") == [("frank", {"queue": "q1", "source": "api"})]


def test_an_unknown_queue_is_queue_not_found_unless_created_on_purpose(tx: Conn) -> None:
    with pytest.raises(QueueNotFound, match="queue 'emials' not found"):
        admin.pause_queue(tx, "emials")
    with pytest.raises(QueueNotFound):
        admin.set_queue_limits(tx, "emials", concurrency=3)
    with pytest.raises(QueueNotFound) as purged:
        admin.purge_queue(tx, "emials")
    assert all(q.name != "emials" for q in admin.list_queues(tx))
    assert "create" not in str(purged.value)  # purge has no such option: the hint would mislead

    created = admin.set_queue_limits(tx, "fresh", concurrency=3, create=True)

    assert (created.name, created.concurrency) == ("fresh", 3)


def test_purge_deletes_a_queues_jobs_but_never_running_ones(tx: Conn) -> None:
    done, running, waiting = enqueue(tx, queue="p"), enqueue(tx, queue="p"), enqueue(tx, queue="p")
    force_state(tx, done, "completed")
    force_state(tx, running, "running")

    with pytest.raises(InvalidJobState, match="running jobs cannot be purged"):
        admin.purge_queue(tx, "p", state="running")
    assert admin.purge_queue(tx, "p", state="completed", actor="gina") == 1
    assert admin.purge_queue(tx, "p", actor="gina") == 1
    assert [state_of(tx, j) for j in (done, running, waiting)] == [None, "running", None]


@pytest.mark.parametrize(("rate", "stored"), [
    ("20/s", (20, 1)), ("100/m", (100, 60)), ("5/h", (5, 3600)), ("100/30s", (100, 30)), ("7/2d", (7, 172800)),
])
def test_set_queue_limits_parses_rates_and_stores_them_with_an_audit_row(tx: Conn, rate: str,
                                                                         stored: tuple[int, int]) -> None:
    enqueue(tx, queue="sms")

    info = admin.set_queue_limits(tx, "sms", concurrency=5, rate=rate, actor="hal")

    row = tx.execute("SELECT concurrency, rate_limit, rate_period_seconds FROM pgqueue.queues WHERE name = 'sms'"
                     ).fetchone()
    assert row == (5, *stored)
    assert info.rate == admin.format_rate(*stored)
    assert admin.parse_rate(info.rate) == stored
    assert audit(tx, "queue_limits_set") == [("hal", {"queue": "sms", "concurrency": 5, "rate_limit": stored[0],
                                                      "rate_period_seconds": stored[1], "source": "api"})]


def test_set_queue_limits_changes_only_the_limit_given_and_none_clears_it(tx: Conn) -> None:
    enqueue(tx, queue="sms")
    admin.set_queue_limits(tx, "sms", concurrency=5, rate="20/s")

    after_rate = admin.set_queue_limits(tx, "sms", rate=None)
    after_concurrency = admin.set_queue_limits(tx, "sms", concurrency=None)

    assert (after_rate.concurrency, after_rate.rate) == (5, None)
    assert (after_concurrency.concurrency, after_concurrency.rate) == (None, None)


@pytest.mark.parametrize(("limits", "message"), [
    ({"rate": "10/fortnight"}, "rate '10/fortnight' must look like N/s"),
    ({"rate": "0/s"}, "N must be between 1"),
    ({"rate": "5/0.5s"}, "whole number of seconds"),
    ({"rate": "fast"}, "must look like N/s"),
    ({"concurrency": -1}, "concurrency -1 must be a whole number from 1"),
    ({"concurrency": 0}, "concurrency 0 must be"),
    ({}, "give concurrency, rate or both"),
])
def test_set_queue_limits_refuses_bad_input_and_changes_nothing(tx: Conn, limits: dict[str, Any],
                                                                message: str) -> None:
    enqueue(tx, queue="sms")
    admin.set_queue_limits(tx, "sms", concurrency=2)

    with pytest.raises(InvalidQueueLimits, match=message):
        admin.set_queue_limits(tx, "sms", **limits)
    assert tx.execute("SELECT concurrency, rate_limit FROM pgqueue.queues WHERE name = 'sms'").fetchone() == (2, None)


# --- workers, schedules, reports ---


def test_list_workers_and_list_schedules_return_typed_records(tx: Conn) -> None:
    tx.execute("INSERT INTO pgqueue.workers (id, hostname, pid, queues, concurrency, lease_expires_at) VALUES "
               "('w1', 'h', 1, '{emails}', 4, now() + interval '1 minute'), "
               "('w2', 'h', 2, '{}', 4, now() - interval '1 minute')")
    from pgqueue.schedules import ScheduleSpec, add_schedule

    add_schedule(tx, ScheduleSpec.build(name="nightly", cron="0 3 * * *", task="cleanup", timezone="Europe/Paris"))

    workers = admin.list_workers(tx)
    schedules = admin.list_schedules(tx)

    assert [(w.id, w.alive, w.queues) for w in workers] == [("w1", True, ("emails",)), ("w2", False, ())]
    assert [(s.name, s.state, s.timezone) for s in schedules] == [("nightly", "active", "Europe/Paris")]
    assert schedules[0].next_run_at is not None
    assert schedules[0].next_run_at > datetime.now(UTC)


# --- wait_for_job ---


@pytest.fixture
def worker_app(dsn: str) -> Iterator[App]:
    app = App(dsn, settings=Settings(dsn=dsn, lease_seconds=10, poll_seconds=30, shutdown_grace_seconds=5))
    release = threading.Event()

    @app.task(name="slow")
    def slow(job: Job) -> dict[str, Any]:
        release.wait(20)
        return {"answer": 42}

    @app.task(name="doomed", max_attempts=1)
    def doomed(job: Job) -> None:
        release.wait(20)
        raise Discard("no")

    app.release = release  # type: ignore[attr-defined]
    worker = Worker(app, concurrency=4, settings=app.settings)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False}, daemon=True)
    thread.start()
    try:
        yield app
    finally:
        release.set()
        worker.stop()
        thread.join(timeout=30)


@pytest.mark.parametrize(("task", "final"), [("slow", "completed"), ("doomed", "failed")])
def test_wait_for_job_returns_the_finished_record_soon_after_the_worker_acks(worker_app: App, dsn: str, task: str,
                                                                             final: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job_id = worker_app.enqueue(conn, task, {})
        wait_until(lambda: state_of(conn, job_id) == "running", timeout=15)
        threading.Timer(0.5, worker_app.release.set).start()  # type: ignore[attr-defined]
        started = time.monotonic()

        job = admin.wait_for_job(conn, job_id, timeout=20, poll_interval=30)

    elapsed = time.monotonic() - started
    assert job.state == final
    assert (job.result == {"answer": 42}) if final == "completed" else job.last_error is not None
    # Woken by NOTIFY, not by the 30 s fallback poll (the worker acks within its ack interval).
    assert elapsed < 10


def test_wait_for_job_wakes_when_another_session_cancels_the_job(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn, autocommit=True) as other:
        job_id = enqueue(conn)
        threading.Timer(0.5, lambda: admin.cancel_job(other, job_id, actor="ivan")).start()
        started = time.monotonic()

        job = admin.wait_for_job(conn, job_id, timeout=20, poll_interval=30)

    assert job.state == "cancelled"
    assert time.monotonic() - started < 10


def test_wait_for_job_times_out_cleanly_and_refuses_an_uncommitted_job(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        job_id = enqueue(conn)
        with pytest.raises(InvalidJobState, match="not committed"):
            admin.wait_for_job(conn, job_id, timeout=5)
        conn.commit()
        started = time.monotonic()
        with pytest.raises(JobWaitTimeout, match=f"job {job_id} is still available after 0.5s"):
            admin.wait_for_job(conn, job_id, timeout=0.5)
        assert time.monotonic() - started < 5
        with pytest.raises(JobNotFound):
            admin.wait_for_job(conn, 999_999, timeout=1)


def test_wait_for_job_async_returns_the_result_the_worker_acked_without_blocking_the_loop(worker_app: App,
                                                                                          dsn: str) -> None:
    async def scenario() -> tuple[admin.JobRecord, int, float]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            job_id = await worker_app.enqueue_async(conn, "slow", {})
            await asyncio.to_thread(wait_until, lambda: state_of_dsn(dsn, job_id) == "running", 15)
            threading.Timer(0.5, worker_app.release.set).start()  # type: ignore[attr-defined]
            ticks = 0

            async def tick() -> None:  # runs only if the wait leaves the event loop free
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.05)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            started = time.monotonic()
            try:
                job = await admin.wait_for_job_async(conn, job_id, timeout=20, poll_interval=30)
            finally:
                ticker.cancel()
            return job, ticks, time.monotonic() - started

    job, ticks, elapsed = asyncio.run(scenario())

    assert (job.state, job.result) == ("completed", {"answer": 42})
    assert ticks >= 5  # the loop kept running while it waited (about 0.5 s at least)
    assert elapsed < 10  # woken by NOTIFY, not by the 30 s fallback poll


def test_wait_for_job_async_wakes_on_a_cancel_times_out_and_refuses_uncommitted_or_unknown_jobs(dsn: str) -> None:
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            job_id = await App(dsn).enqueue_async(conn, "t", {})
            with pytest.raises(InvalidJobState, match="not committed"):
                await admin.wait_for_job_async(conn, job_id, timeout=5)
            await conn.commit()
            with pytest.raises(JobWaitTimeout, match=f"job {job_id} is still available after 0.3s"):
                await admin.wait_for_job_async(conn, job_id, timeout=0.3)
            await conn.commit()
            with pytest.raises(JobNotFound):
                await admin.wait_for_job_async(conn, 999_999, timeout=1)
            await conn.rollback()

            def cancel() -> None:
                with psycopg.connect(dsn, autocommit=True) as other:
                    admin.cancel_job(other, job_id, actor="ivan")

            threading.Timer(0.5, cancel).start()
            started = time.monotonic()
            job = await admin.wait_for_job_async(conn, job_id, timeout=20, poll_interval=30)
            assert job.state == "cancelled"
            assert time.monotonic() - started < 10

    asyncio.run(scenario())


def test_wait_for_job_async_takes_a_listening_dsn_in_the_sqlalchemy_form(dsn: str) -> None:
    # wait_for_job (sync) took dsn="postgresql+psycopg://..."; the async twin handed it to psycopg
    # as it was, which refused to parse it.
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            job_id = await App(dsn).enqueue_async(conn, "t", {})
            await conn.commit()
            with pytest.raises(JobWaitTimeout, match=f"job {job_id} is still available"):
                await admin.wait_for_job_async(conn, job_id, timeout=0.3, dsn=sqlalchemy_form(dsn))

    asyncio.run(scenario())


def running_job(conn: Conn) -> tuple[int, str]:
    """A job claimed by a (pretend) worker: its id and lease token."""
    job_id = enqueue(conn)
    force_state(conn, job_id, "running")
    row = conn.execute("SELECT lease_token::text FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None
    return job_id, row[0]


async def ack(dsn: str, job_id: int, token: str, *, commit_after: float = 0.0) -> None:
    """What a worker's acker writes for a completed job; its transaction commits ``commit_after``
    seconds after the statement."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        written = await AsyncJobStore(conn).complete_jobs([Outcome(job_id=job_id, token=token, state="completed")])
        assert written == {job_id}
        await asyncio.sleep(commit_after)
        await conn.commit()


def done_notifications(listener: Conn, seconds: float) -> int:
    return sum(1 for _ in listener.notifies(timeout=seconds))


def test_acks_notify_the_done_channel_only_while_a_waiter_is_registered(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {DONE_CHANNEL}")  # listening alone is not waiting
        first, second = running_job(conn), running_job(conn)

        asyncio.run(ack(dsn, *first))
        unwatched = done_notifications(listener, 1.0)
        listener.execute("SELECT pg_advisory_lock_shared(%s)", [WAITERS_LOCK_KEY])  # what a waiter holds
        asyncio.run(ack(dsn, *second))
        watched = done_notifications(listener, 5.0)

    assert (unwatched, watched) == (0, 1)


def test_a_waiter_arriving_during_an_unnotified_ack_sees_its_outcome_at_commit(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job_id, token = running_job(conn)
        # The ack's statement runs with nobody waiting (so it will not notify) and commits 2 s
        # later; the waiter starts in between. With a 30 s fallback poll, only the lock hand-off
        # can wake it in time.
        acking = threading.Thread(target=asyncio.run, args=(ack(dsn, job_id, token, commit_after=2.0),))
        acking.start()
        wait_until(lambda: ack_holds_waiters_lock(dsn), timeout=10, message="the ack holds the lock")
        started = time.monotonic()

        job = admin.wait_for_job(conn, job_id, timeout=20, poll_interval=30)
        acking.join(10)

    assert job.state == "completed"
    assert time.monotonic() - started < 10


def test_a_waiter_that_cannot_join_within_its_timeout_times_out(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn) as holder:
        job_id = enqueue(conn)
        holder.execute("SELECT pg_advisory_xact_lock(%s)", [WAITERS_LOCK_KEY])  # an ack not yet committed
        started = time.monotonic()
        with pytest.raises(JobWaitTimeout, match=f"job {job_id} is still available after 0.5s"):
            admin.wait_for_job(conn, job_id, timeout=0.5)
        holder.rollback()

    assert time.monotonic() - started < 5


def ack_holds_waiters_lock(dsn: str) -> bool:
    """True once some session holds the waiters' lock exclusively (an ack that has not committed)."""
    with psycopg.connect(dsn, autocommit=True) as probe:
        row = probe.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ExclusiveLock' "
                            "AND granted AND ((classid::bigint << 32) | objid::bigint) = %s "
                            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                            [WAITERS_LOCK_KEY]).fetchone()
    return bool(row and row[0])


# --- prune ---


def test_prune_deletes_by_age_counts_on_a_dry_run_and_records_actor_and_source(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        old = [enqueue(conn) for _ in range(3)]
        recent, failed = enqueue(conn), enqueue(conn)
        conn.execute("UPDATE pgqueue.jobs SET state = 'completed', attempt = 1, "
                     "finished_at = now() - interval '2 hours' WHERE id = ANY(%s)", [old])
        conn.execute("UPDATE pgqueue.jobs SET state = 'completed', attempt = 1, finished_at = now() WHERE id = %s",
                     [recent])
        conn.execute("UPDATE pgqueue.jobs SET state = 'failed', attempt = 1, finished_at = now() - interval '30 days' "
                     "WHERE id = %s", [failed])

        with pytest.raises(ConfigurationError, match="completed_older_than 'soon'"):
            admin.prune(dsn, completed_older_than="soon")
        with pytest.raises(ConfigurationError, match="source 'Web!'"):
            admin.prune(dsn, completed_older_than=0, source="Web!")
        for bad in (0, 100_001, 2.5, True):
            with pytest.raises(ConfigurationError, match="batch_size must be an integer between 1 and 100000"):
                admin.prune(dsn, completed_older_than=0, batch_size=bad)  # type: ignore[arg-type]
        counted = admin.prune(dsn, completed_older_than="1h", failed_older_than=None, dry_run=True)
        steps: list[tuple[str, int]] = []
        pruned = admin.prune(dsn, completed_older_than=3600.0, failed_older_than="never", actor="olga",
                             progress=lambda step, done: steps.append((step, done)))

        assert (counted.dry_run, counted.completed, counted.failed) == (True, 3, 0)
        assert (pruned.dry_run, pruned.completed, pruned.failed, pruned.total) == (False, 3, 0, 3)
        assert steps[0] == ("completed", 3)
        assert [state_of(conn, j) for j in (*old, recent, failed)] == [None, None, None, "completed", "failed"]
        rows = conn.execute("SELECT actor, detail ->> 'source', (detail ->> 'completed')::int FROM pgqueue.job_events "
                            "WHERE event = 'pruned'").fetchall()
        assert rows == [("olga", "api", 3)]  # the refused calls and the dry run wrote nothing


def state_of_dsn(dsn: str, job_id: int) -> str | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return state_of(conn, job_id)


# --- health ---


def test_health_reports_each_check_and_is_healthy_on_a_migrated_idle_database(dsn: str) -> None:
    report = admin.health(dsn)

    assert report.healthy
    assert [c.name for c in report.checks] == ["database", "schema", "workers", "notification_queue",
                                               "long_transactions", "circuit_breakers"]
