"""The shutdown watchdog's release (``JobStore.release_jobs``, from its own thread and session)
racing the worker's event loop as it wakes up: whichever writes first wins, by the lease token,
and each job ends with one outcome and at most one ``released`` row."""

from __future__ import annotations

import asyncio
import threading

import psycopg
from psycopg.rows import TupleRow

from pgqueue import App
from pgqueue._db.jobs import AsyncJobStore, JobStore, Outcome
from pgqueue.jobs import Job
from tests.helpers import wait_until

Db = psycopg.Connection[TupleRow]


def claim_one(dsn: str) -> Job:
    async def claim() -> Job:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            [job] = await AsyncJobStore(conn).claim_jobs(None, 1, "loop-worker")
            return job

    return asyncio.run(claim())


def loop_completes(dsn: str, job: Job) -> set[int]:
    async def complete() -> set[int]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await AsyncJobStore(conn).complete_jobs(
                [Outcome(job_id=job.id, token=job.lease_token, state="completed", result="1")])

    return asyncio.run(complete())


def loop_releases(dsn: str, job: Job) -> set[int]:
    async def release() -> set[int]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await AsyncJobStore(conn).release_jobs([(job.id, job.lease_token)])

    return asyncio.run(release())


def watchdog_releases(dsn: str, job: Job) -> set[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return JobStore(conn).release_jobs([(job.id, job.lease_token)])


def events(db: Db, job_id: int) -> list[str]:
    return [row[0] for row in db.execute(
        "SELECT event FROM pgqueue.job_events WHERE job_id = %s ORDER BY id", [job_id]).fetchall()]


def state(db: Db, job_id: int) -> tuple[str, int]:
    row = db.execute("SELECT state, attempt FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None
    return row[0], row[1]


def test_the_watchdog_releases_like_the_loop_an_uncounted_attempt_with_its_audit_row(dsn: str, db: Db) -> None:
    job_id = App(dsn).enqueue(None, "work")
    job = claim_one(dsn)
    assert job.id == job_id

    assert watchdog_releases(dsn, job) == {job_id}
    assert state(db, job_id) == ("available", 0)
    detail = db.execute("SELECT detail, worker_id FROM pgqueue.job_events WHERE job_id = %s AND event = 'released'",
                        [job_id]).fetchone()
    assert detail == ({"reason": "worker shutdown", "counted_attempt": False}, "loop-worker")


def test_an_outcome_the_loop_wrote_first_is_left_alone_by_the_watchdog(dsn: str, db: Db) -> None:
    job_id = App(dsn).enqueue(None, "work")
    job = claim_one(dsn)

    assert loop_completes(dsn, job) == {job_id}
    assert watchdog_releases(dsn, job) == set()
    assert state(db, job_id) == ("completed", 1)
    assert events(db, job_id) == ["enqueued", "claimed", "completed"]


def test_after_the_watchdog_released_the_loop_can_neither_complete_nor_release_the_job_again(
        dsn: str, db: Db) -> None:
    job_id = App(dsn).enqueue(None, "work")
    job = claim_one(dsn)

    assert watchdog_releases(dsn, job) == {job_id}
    assert loop_completes(dsn, job) == set()
    assert loop_releases(dsn, job) == set()
    assert state(db, job_id) == ("available", 0)
    assert events(db, job_id) == ["enqueued", "claimed", "released"]


def test_a_release_racing_the_loops_uncommitted_completion_waits_for_it_then_leaves_it_alone(
        dsn: str, db: Db) -> None:
    job_id = App(dsn).enqueue(None, "work")
    job = claim_one(dsn)

    with psycopg.connect(dsn) as loop_conn:  # a transaction: the completion holds the row, uncommitted
        assert JobStore(loop_conn).complete_jobs(
            [Outcome(job_id=job.id, token=job.lease_token, state="completed", result="1")]) == {job_id}
        results: list[set[int]] = []
        watchdog = threading.Thread(target=lambda: results.append(watchdog_releases(dsn, job)))
        watchdog.start()
        wait_until(lambda: db.execute(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone(), timeout=10, message="the release waits for the completion's row lock")
        loop_conn.commit()
        watchdog.join(10)
    assert results == [set()]
    assert state(db, job_id) == ("completed", 1)
    assert events(db, job_id) == ["enqueued", "claimed", "completed"]
