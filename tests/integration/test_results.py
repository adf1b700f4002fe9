"""``app.result`` / ``app.result_async``: wait for a job and get its result, or its failure as a
typed error, from the enqueuing code."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg.rows import TupleRow

from pgqueue import App, Discard, Job, Worker, admin
from pgqueue._crypto import generate_key
from pgqueue.errors import (
    EncryptionKeyMissing,
    InvalidJobState,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobUnsuccessful,
    JobWaitTimeout,
)
from pgqueue.settings import Settings

Conn = psycopg.Connection[TupleRow]


def _settings(dsn: str, **overrides: object) -> Settings:
    return Settings(dsn=dsn, poll_seconds=0.2, lease_seconds=5, shutdown_grace_seconds=2, **overrides)  # type: ignore[arg-type]


@contextmanager
def running(app: App) -> Iterator[Worker]:
    worker = Worker(app, concurrency=2, settings=app.settings)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=15)


def _app(dsn: str, **overrides: object) -> App:
    app = App(dsn, settings=_settings(dsn, **overrides))

    @app.task(name="render")
    def render(job: Job, pages: int) -> dict[str, int]:
        return {"pages": pages}

    @app.task(name="explode", max_attempts=1)
    def explode(job: Job, why: str) -> None:
        raise ValueError(f"bad input: {why}")

    @app.task(name="refuse")
    def refuse(job: Job) -> None:
        raise Discard("not for us")

    return app


def test_result_waits_for_the_worker_and_returns_what_the_handler_returned(dsn: str, conn: Conn) -> None:
    app = _app(dsn)
    job_id = app.tasks["render"].enqueue(conn, pages=12)
    conn.commit()
    with running(app):
        assert app.result(conn, job_id, timeout=30) == {"pages": 12}
    # Once finished, it answers at once, also on a connection of pgqueue's own.
    assert app.result(None, job_id, timeout=0) == {"pages": 12}


def test_a_failed_job_raises_job_failed_carrying_its_last_error(dsn: str, conn: Conn) -> None:
    app = _app(dsn)
    failing = app.tasks["explode"].enqueue(conn, why="zero")
    discarded = app.tasks["refuse"].enqueue(conn)
    conn.commit()
    with running(app):
        with pytest.raises(JobFailed, match=rf"job {failing} \(explode\) failed: ValueError: bad input: zero") as err:
            app.result(conn, failing, timeout=30)
        with pytest.raises(JobFailed, match="Discard: not for us"):
            app.result(conn, discarded, timeout=30)
    assert err.value.job_id == failing
    assert err.value.error_type == "ValueError"
    assert err.value.last_error is not None
    assert "Traceback" in err.value.last_error["traceback"]


def test_a_cancelled_job_raises_job_cancelled(dsn: str, conn: Conn) -> None:
    app = _app(dsn)
    job_id = app.tasks["render"].enqueue(conn, pages=1)
    conn.commit()
    admin.cancel_job(conn, job_id, actor="test")
    conn.commit()
    with pytest.raises(JobCancelled, match="was cancelled") as err:
        app.result(conn, job_id, timeout=5)
    assert isinstance(err.value, JobUnsuccessful)


def test_waiting_is_bounded_and_refuses_jobs_that_cannot_finish(dsn: str, conn: Conn) -> None:
    app = _app(dsn)
    job_id = app.tasks["render"].enqueue(conn, pages=1)
    conn.commit()
    started = time.monotonic()
    with pytest.raises(JobWaitTimeout, match=f"job {job_id} is still available after 0.3s"):
        app.result(conn, job_id, timeout=0.3)
    assert time.monotonic() - started < 10
    uncommitted = app.tasks["render"].enqueue(conn, pages=2)
    with pytest.raises(InvalidJobState, match="not committed"):
        app.result(conn, uncommitted, timeout=5)
    conn.rollback()
    with pytest.raises(JobNotFound, match="job 999999 not found"):
        app.result(conn, 999999, timeout=1)


def test_result_async_waits_on_an_async_connection(dsn: str) -> None:
    app = _app(dsn)

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            ok = await app.tasks["render"].enqueue_async(aconn, pages=3)
            bad = await app.tasks["explode"].enqueue_async(aconn, why="async")
            await aconn.commit()
            worker = Worker(app, concurrency=2, settings=app.settings)
            run = asyncio.create_task(worker.run_async())
            try:
                assert await app.result_async(aconn, ok, timeout=30) == {"pages": 3}
                with pytest.raises(JobFailed, match="ValueError: bad input: async"):
                    await app.result_async(aconn, bad, timeout=30)
            finally:
                worker.stop()
                await run
            waiting = await app.tasks["render"].enqueue_async(aconn, pages=4)
            await aconn.commit()
            with pytest.raises(JobWaitTimeout, match="still available"):
                await app.result_async(aconn, waiting, timeout=0.2)

    asyncio.run(main())


def test_result_async_without_a_connection_waits_on_one_of_pgqueues_own(dsn: str, conn: Conn) -> None:
    app = _app(dsn)
    job_id = app.tasks["render"].enqueue(conn, pages=5)
    conn.commit()

    async def main() -> object:
        worker = Worker(app, concurrency=2, settings=app.settings)
        run = asyncio.create_task(worker.run_async())
        try:
            return await app.result_async(None, job_id, timeout=30)
        finally:
            worker.stop()
            await run

    assert asyncio.run(main()) == {"pages": 5}


def test_an_encrypted_jobs_result_and_error_are_opened_with_the_apps_keys(dsn: str, conn: Conn) -> None:
    key = generate_key()
    app = _app(dsn, encryption_keys=(key,))
    ok = app.tasks["render"].options(encrypt=True).enqueue(conn, pages=5)
    bad = app.tasks["explode"].options(encrypt=True).enqueue(conn, why="secret")
    conn.commit()
    with running(app):
        assert app.result(conn, ok, timeout=30) == {"pages": 5}
        with pytest.raises(JobFailed, match="ValueError: bad input: secret"):
            app.result(conn, bad, timeout=30)
    assert conn.execute("SELECT result FROM pgqueue.jobs WHERE id = %s", [ok]).fetchone() == (None,)
    keyless = _app(dsn)
    with pytest.raises(EncryptionKeyMissing):
        keyless.result(conn, ok, timeout=1)
    with pytest.raises(JobFailed, match=r"failed: ValueError$"):
        keyless.result(conn, bad, timeout=1)


# --- woken by the acks' NOTIFY, which is sent only while someone waits ---


def _running_job(conn: Conn) -> tuple[int, str]:
    job_id = App().enqueue(conn, "render", {"pages": 1})
    row = conn.execute("UPDATE pgqueue.jobs SET state = 'running', attempt = 1, lease_token = gen_random_uuid() "
                       "WHERE id = %s RETURNING lease_token::text", [job_id]).fetchone()
    assert row is not None
    conn.commit()
    return job_id, row[0]


async def _ack(dsn: str, job_id: int, token: str, *, commit_after: float) -> None:
    """What a worker's acker writes for a completed job, committed ``commit_after`` seconds later."""
    from pgqueue._db.jobs import AsyncJobStore, Outcome

    async with await psycopg.AsyncConnection.connect(dsn) as aconn:
        done = await AsyncJobStore(aconn).complete_jobs([Outcome(job_id=job_id, token=token, state="completed",
                                                                 result='{"pages": 1}')])
        assert done == {job_id}
        await asyncio.sleep(commit_after)
        await aconn.commit()


def _waiters(dsn: str, mode: str = "ShareLock") -> int:
    """Sessions of this database holding the waiters' lock in ``mode`` (ShareLock: waiters;
    ExclusiveLock: an ack that ran with nobody waiting and has not committed)."""
    from pgqueue._db.notifications import WAITERS_LOCK_KEY

    with psycopg.connect(dsn, autocommit=True) as probe:
        row = probe.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = %s "
                            "AND granted AND ((classid::bigint << 32) | objid::bigint) = %s "
                            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                            [mode, WAITERS_LOCK_KEY]).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("waiter_first", [True, False])
def test_result_wakes_at_the_acks_commit_whoever_comes_first(dsn: str, conn: Conn, waiter_first: bool) -> None:
    # A 30 s poll: returning within 10 s means the wake-up came from the ack (its NOTIFY when the
    # waiter came first; the waiters' lock hand-off when the ack's statement ran with nobody waiting).
    job_id, token = _running_job(conn)
    results: list[object] = []
    waiter = threading.Thread(target=lambda: results.append(
        App(dsn).result(None, job_id, timeout=20, poll_interval=30)))
    if waiter_first:
        waiter.start()
        deadline = time.monotonic() + 10
        while _waiters(dsn) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _waiters(dsn) == 1
        started = time.monotonic()
        asyncio.run(_ack(dsn, job_id, token, commit_after=0.0))
    else:
        acking = threading.Thread(target=asyncio.run, args=(_ack(dsn, job_id, token, commit_after=1.5),))
        acking.start()
        deadline = time.monotonic() + 10
        while _waiters(dsn, "ExclusiveLock") == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _waiters(dsn, "ExclusiveLock") == 1  # the ack's statement ran with nobody waiting
        started = time.monotonic()
        waiter.start()
        acking.join(15)
    waiter.join(25)

    assert results == [{"pages": 1}]
    assert time.monotonic() - started < 10
