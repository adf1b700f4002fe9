"""The worker's prefetch buffer: jobs claimed ahead of a free slot, on a real database.

A prefetched job is claimed (``running`` under the worker's lease) before it starts. These tests
check what that must never change: a worker runs at most ``concurrency`` handlers at once, each
job runs once, a graceful stop hands the buffered jobs back uncounted, the lost-claim reconcile
leaves them alone, and a job cancelled while it waits in the buffer never starts. What happened is
read from ``pgqueue.jobs`` and the audit trail on another connection.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import psycopg
import pytest
from psycopg.rows import TupleRow

from pgqueue import App, Job, JobSpec, Worker, admin
from pgqueue._worker.claimer import MIN_ACK_BACKLOG
from pgqueue.settings import Settings
from tests.helpers import wait_until, wait_until_async

Conn = psycopg.Connection[TupleRow]
BOUND = 60.0


def make_app(dsn: str, *, lease_seconds: float = 2, prefetch: int | None = None) -> App:
    return App(dsn, settings=Settings(dsn=dsn, lease_seconds=lease_seconds, poll_seconds=0.5,
                                      shutdown_grace_seconds=5, prefetch=prefetch))


def run_in_thread(worker: Worker, *, until_empty: bool = False) -> threading.Thread:
    target = worker.run_until_empty if until_empty else worker.run
    thread = threading.Thread(target=target, kwargs={"install_signal_handlers": False}, daemon=True)
    thread.start()
    return thread


def enqueue(app: App, task: str, count: int, *, start: int = 0, priority: int = 0) -> None:
    with psycopg.connect(app.dsn) as conn:
        app.enqueue_many(conn, [JobSpec(task, {"i": i}, priority=priority) for i in range(start, start + count)])


def no_op_backlog(dsn: str, jobs: int) -> tuple[App, list[int]]:
    """An app whose "fast" no-op task records each ``i`` it ran, with ``jobs`` of them waiting.

    A long lease: the periodic lost-claim reconcile (every lease) must not be what gets a paused
    claimer going again."""
    app = make_app(dsn, lease_seconds=120)
    ran: list[int] = []

    @app.task(name="fast")
    async def fast(job: Job, i: int) -> None:
        ran.append(i)

    enqueue(app, "fast", jobs)
    return app, ran


def drain_around(app: App, middle: str) -> None:
    """50 "fast" jobs, one ``middle`` job behind them (i = 50), 60 more "fast" behind it; a
    concurrency-1 worker runs them all: the fast jobs before it fill the buffer, so jobs are
    buffered behind ``middle`` while it runs."""
    enqueue(app, "fast", 50, priority=0)
    enqueue(app, middle, 1, start=50, priority=1)
    enqueue(app, "fast", 60, start=51, priority=2)
    thread = run_in_thread(Worker(app, concurrency=1), until_empty=True)
    thread.join(BOUND)
    assert not thread.is_alive()


def claims(db: Conn) -> int:
    """Claim statements that ran: each claims its batch under one lease token."""
    row = db.execute("SELECT count(DISTINCT lease_token) FROM pgqueue.jobs WHERE lease_token IS NOT NULL").fetchone()
    assert row is not None
    return int(row[0])


def states(db: Conn) -> dict[str, int]:
    return dict(db.execute("SELECT state, count(*) FROM pgqueue.jobs GROUP BY state").fetchall())


@dataclass
class Runs:
    """What the "fast" task of :func:`count_runs` saw: each ``i`` it ran, and the most at once."""

    ran: list[int] = field(default_factory=list)
    active: int = 0
    most: int = 0


def count_runs(app: App) -> Runs:
    """Register a no-op "fast" task on ``app`` that records each ``i`` it runs and how many ran at once."""
    runs = Runs()

    @app.task(name="fast")
    async def fast(job: Job, i: int) -> None:
        runs.active += 1
        runs.most = max(runs.most, runs.active)
        await asyncio.sleep(0)  # let anything else that was wrongly started run alongside
        runs.ran.append(i)
        runs.active -= 1

    return runs


@pytest.mark.parametrize("prefetch", [None, 0])
def test_a_concurrency_1_worker_claims_ahead_but_runs_one_job_at_a_time(dsn: str, db: Conn,
                                                                        prefetch: int | None) -> None:
    app = make_app(dsn, prefetch=prefetch)
    runs = count_runs(app)

    jobs = 300
    enqueue(app, "fast", jobs)
    thread = run_in_thread(Worker(app, concurrency=1), until_empty=True)
    thread.join(BOUND)
    assert not thread.is_alive()

    assert sorted(runs.ran) == list(range(jobs))
    assert runs.most == 1
    assert states(db) == {"completed": jobs}
    if prefetch == 0:
        assert claims(db) == jobs  # one round trip per job: what prefetching saves
    else:
        assert claims(db) <= jobs // 4


@pytest.mark.parametrize(("limit", "prefetched"), [(10_000, True), (3, False)])
def test_a_limited_queue_is_claimed_ahead_only_while_its_limit_leaves_room_to_spare(
        dsn: str, db: Conn, limit: int, prefetched: bool) -> None:
    """A buffered job counts against its queue's limit while it waits: a worker claims ahead for
    a limited queue only while the limit allows many times its batch, never near a tight limit."""
    app = make_app(dsn)
    runs = count_runs(app)

    admin.set_queue_limits(db, "lim", concurrency=limit, create=True)
    jobs = 300
    with psycopg.connect(app.dsn) as conn:
        app.enqueue_many(conn, [JobSpec("fast", {"i": i}, queue="lim") for i in range(jobs)])
    thread = run_in_thread(Worker(app, queues=["lim"], concurrency=1), until_empty=True)
    thread.join(BOUND)
    assert not thread.is_alive()

    assert sorted(runs.ran) == list(range(jobs))
    assert runs.most == 1
    assert states(db) == {"completed": jobs}
    if prefetched:
        assert claims(db) <= jobs // 4
    else:
        assert claims(db) == jobs  # one job per claim: nothing buffered against the tight limit


def test_a_graceful_stop_hands_buffered_jobs_back_uncounted(dsn: str, db: Conn) -> None:
    app = make_app(dsn)
    ran: list[int] = []
    worker = Worker(app, concurrency=1)

    @app.task(name="fast")
    async def fast(job: Job, i: int) -> None:
        ran.append(i)
        if len(ran) == 150:
            worker.stop()

    enqueue(app, "fast", 400)
    thread = run_in_thread(worker)
    thread.join(BOUND)
    assert not thread.is_alive()

    counts = states(db)
    assert "running" not in counts
    assert counts["completed"] == len(ran) >= 150
    assert counts["available"] == 400 - len(ran)
    left = db.execute("SELECT DISTINCT attempt FROM pgqueue.jobs WHERE state = 'available'").fetchall()
    assert left == [(0,)]
    # Some were prefetched when the stop came, and they went back with an audit row each.
    released = db.execute("SELECT count(*) FROM pgqueue.job_events WHERE event = 'released'").fetchone()
    assert released is not None
    assert released[0] >= 1


def test_the_lost_claim_reconcile_leaves_buffered_jobs_alone(dsn: str, db: Conn) -> None:
    # lease_seconds=1: the claimer reconciles what it holds every second while it keeps claiming;
    # 2-ms jobs keep a few claimed ahead all the time, for about three seconds.
    app = make_app(dsn, lease_seconds=1)
    ran: list[int] = []

    @app.task(name="short")
    async def short(job: Job, i: int) -> None:
        await asyncio.sleep(0.002)
        ran.append(i)

    jobs = 1000
    enqueue(app, "short", jobs)
    thread = run_in_thread(Worker(app, concurrency=1), until_empty=True)
    thread.join(BOUND)
    assert not thread.is_alive()

    assert sorted(ran) == list(range(jobs))  # each once
    assert states(db) == {"completed": jobs}
    # They were claimed ahead all along, so each reconcile met buffered jobs. (How far ahead follows
    # the pace of the 2-ms jobs, which a loaded machine slows: count the claims that buffered any.)
    row = db.execute("SELECT count(*) FROM (SELECT lease_token FROM pgqueue.jobs GROUP BY lease_token"
                     " HAVING count(*) > 1) AS ahead").fetchone()
    assert row is not None
    assert row[0] >= 50, row
    assert db.execute("SELECT DISTINCT attempt FROM pgqueue.jobs").fetchall() == [(1,)]
    assert db.execute("SELECT count(*) FROM pgqueue.job_events WHERE event = 'released'").fetchone() == (0,)


def test_a_job_cancelled_while_buffered_never_starts(dsn: str, db: Conn) -> None:
    app = make_app(dsn)
    ran: list[int] = []
    buffered: list[int] = []

    @app.task(name="fast")
    async def fast(job: Job, i: int) -> None:
        ran.append(i)

    @app.task(name="blocker")
    async def blocker(job: Job, i: int) -> None:
        # The jobs behind this one were claimed ahead: cancel one of them, then give the worker
        # time to hear of it (the notification, or the heartbeat's check every 0.5 s).
        def waiting() -> list[tuple[int]]:
            # Jobs queued behind the blocker (i > 50), not earlier ones whose outcome is unwritten.
            return db.execute("SELECT id FROM pgqueue.jobs WHERE state = 'running' AND (args->>'i')::int > 50 "
                              "ORDER BY id DESC").fetchall()

        rows: list[tuple[int]] = []
        for _ in range(10):  # the claim that buffers the jobs behind this one may still be on its way
            rows = await asyncio.to_thread(waiting)
            if rows:
                break
            await asyncio.sleep(0.05)
        if rows:
            buffered.append(rows[0][0])
            with psycopg.connect(dsn) as conn:
                admin.cancel_job(conn, rows[0][0], actor="test")
            await asyncio.sleep(1.5)
        ran.append(i)

    drain_around(app, "blocker")

    assert buffered, "nothing was prefetched behind the blocker"
    cancelled_i = db.execute("SELECT (args->>'i')::int FROM pgqueue.jobs WHERE id = %s", buffered).fetchone()
    assert cancelled_i is not None
    assert cancelled_i[0] not in ran
    assert sorted(ran) == [i for i in range(111) if i != cancelled_i[0]]
    assert states(db) == {"completed": 110, "cancelled": 1}


def test_slow_jobs_are_not_claimed_ahead(dsn: str, db: Conn) -> None:
    app = make_app(dsn)

    @app.task(name="slow")
    def slow(job: Job, i: int) -> None:
        time.sleep(0.1)  # 100 ms: more than the 20 ms window, so nothing is claimed ahead

    enqueue(app, "slow", 8)
    thread = run_in_thread(Worker(app, concurrency=2), until_empty=True)
    wait_until(lambda: not thread.is_alive(), timeout=BOUND, message="the worker to finish")
    assert states(db) == {"completed": 8}
    # Each claim took only what its free slots could start (a claim's jobs share its lease token).
    row = db.execute("SELECT max(n) FROM (SELECT count(*) AS n FROM pgqueue.jobs GROUP BY lease_token) AS c").fetchone()
    assert row == (2,)


@pytest.mark.parametrize("concurrency", [2, 50])
def test_claims_pause_while_outcomes_cannot_be_written_and_nothing_is_lost(dsn: str, db: Conn,
                                                                          concurrency: int) -> None:
    # Another session locks the rows of the jobs running now, so the acker's next batch waits on
    # them while the no-op handlers go on finishing: without backpressure the worker would claim
    # the whole backlog while none of it can be acknowledged.
    jobs = 3000
    app, ran = no_op_backlog(dsn, jobs)
    worker = Worker(app, concurrency=concurrency)
    thread = run_in_thread(worker, until_empty=True)
    with psycopg.connect(dsn) as blocker:
        def locked_some() -> int:
            rows = blocker.execute("SELECT id FROM pgqueue.jobs WHERE state = 'running' FOR UPDATE").fetchall()
            return len(rows)

        wait_until(locked_some, timeout=BOUND, message="running jobs to lock")
        time.sleep(2)  # the worker runs on meanwhile: its acks wait on our locks
        claimed = states(db).get("running", 0)
        blocker.rollback()
    # The unwritten outcomes (at most the limit), a prefetch buffer and the slots, give or take a batch.
    assert claimed <= MIN_ACK_BACKLOG + 3 * max(concurrency, 32), claimed
    assert len(ran) < jobs
    # Once the locks go, everything completes: a paused claimer must not starve the acker.
    thread.join(BOUND)
    assert not thread.is_alive()
    assert sorted(ran) == list(range(jobs))
    assert states(db) == {"completed": jobs}


def test_a_wide_worker_drains_a_backlog_of_no_op_jobs_while_its_acks_trail_its_claims(dsn: str, db: Conn) -> None:
    # 1 x 50 and no-op handlers: handlers finish far faster than outcomes are written, so the
    # claimer keeps reaching the unwritten-outcome limit; it must pause without starving the acker.
    jobs = 3000
    app, ran = no_op_backlog(dsn, jobs)
    thread = run_in_thread(Worker(app, concurrency=50), until_empty=True)
    thread.join(BOUND)
    assert not thread.is_alive()
    assert sorted(ran) == list(range(jobs))
    assert states(db) == {"completed": jobs}


@pytest.mark.timing
def test_buffered_jobs_behind_a_stalled_slot_go_back_and_the_worker_claims_nothing_more_meanwhile(
        dsn: str, db: Conn) -> None:
    # Fast jobs fill the buffer; then a job that takes 3 s holds the only slot. The jobs buffered
    # behind it must not wait those 3 s (another worker could run them): a second after the last
    # start they go back, uncounted, and nothing more is claimed ahead while the slot is stuck.
    # (A fixed one-second wait begun just before the slow start used to hand them back after 2 s.)
    app = make_app(dsn, lease_seconds=30)
    ran: list[int] = []
    seen: dict[str, float] = {}

    def running() -> int:
        row = db.execute("SELECT count(*) FROM pgqueue.jobs WHERE state = 'running'").fetchone()
        return int(row[0]) if row else -1

    @app.task(name="fast")
    async def fast(job: Job, i: int) -> None:
        ran.append(i)

    @app.task(name="slow")
    async def slow(job: Job, i: int) -> None:
        started = time.monotonic()

        async def only_this_job_runs() -> bool:
            return await asyncio.to_thread(running) == 1

        await wait_until_async(only_this_job_runs, timeout=2.7, interval=0.02, message="the buffer to go back")
        seen["buffer_back_after_s"] = time.monotonic() - started
        await asyncio.sleep(0.3)
        seen["running_later"] = await asyncio.to_thread(running)
        await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - started)))
        ran.append(i)

    drain_around(app, "slow")

    assert sorted(ran) == list(range(111))
    assert states(db) == {"completed": 111}
    assert 0.9 <= seen["buffer_back_after_s"] < 1.7, seen  # BUFFER_TTL_SECONDS after the start, not 2
    assert seen["running_later"] == 1  # only the stuck job: nothing more was claimed ahead
    released = db.execute("SELECT count(*) FROM pgqueue.job_events WHERE event = 'released' "
                          "AND detail->>'reason' = 'prefetched job waited behind a stalled slot'").fetchone()
    assert released is not None
    assert released[0] >= 1
    assert db.execute("SELECT DISTINCT attempt FROM pgqueue.jobs").fetchall() == [(1,)]
