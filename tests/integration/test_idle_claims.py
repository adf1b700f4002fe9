"""An idle worker's wake-up path: it claims once per announced job, not once more each time a job
of its ends, and nothing else runs between the notification, the claim and the handler's start.

A worker whose claim came back short (its queues held nothing more) waits for a notification before
it claims again: a freed slot alone brings no new job, since every path that makes a job available
NOTIFYs. The claims are counted by wrapping the worker's claim call; a 60 s poll keeps polling out
of the count (and proves the jobs were found through LISTEN/NOTIFY).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

import pgqueue._worker.claimer as claimer_module
from pgqueue import App, Job, Worker
from pgqueue._db.jobs import AsyncJobStore
from pgqueue._db.notifications import ListenSession
from pgqueue._worker.claimer import Claimer
from pgqueue.settings import Settings
from tests.helpers import wait_until

Conn = psycopg.Connection[TupleRow]
WAIT = 15.0


@pytest.fixture
def app(dsn: str) -> App:
    return App(dsn, settings=Settings(dsn=dsn, lease_seconds=5, poll_seconds=60, shutdown_grace_seconds=5))


@pytest.fixture
def claims(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(the wake-up count the claimer's round began with, jobs the claim returned), one per claim."""
    calls: list[tuple[int, int]] = []
    round_began: list[int] = [-1]
    claim_round = Claimer._claim_round
    original = AsyncJobStore.claim_jobs

    async def marked_round(claimer: Claimer, wakeups: int) -> tuple[bool, bool]:
        round_began[0] = wakeups
        return await claim_round(claimer, wakeups)

    async def counted(store: AsyncJobStore, *args: Any, **kwargs: Any) -> list[Job]:
        # The round's count, not the count now: a wake-up set since the round began (before this
        # claim went out) is one the claimer answers with another round.
        wakeups = round_began[0]
        jobs = await original(store, *args, **kwargs)
        calls.append((wakeups, len(jobs)))
        return jobs

    monkeypatch.setattr(Claimer, "_claim_round", marked_round)
    monkeypatch.setattr(AsyncJobStore, "claim_jobs", counted)
    return calls


@pytest.fixture
def run_worker(app: App) -> Iterator[Worker]:
    worker = Worker(app, concurrency=4)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False}, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(30)
        assert not thread.is_alive(), "the worker did not stop within 30 s"


def settled(worker: Worker, claims: list[tuple[int, int]]) -> int:
    """Wait until the worker listens and has answered the wake-up its listener gives on connecting
    (the claim that catches up on jobs enqueued before it listened); return the claims so far."""
    flow = worker._loop.flow
    wait_until(lambda: flow.listening and any(times == flow.wakeup.times for times, _ in claims),
               timeout=WAIT, message="the worker to listen and claim once")
    return len(claims)


def state(db: Conn, job_id: int) -> str:
    row = db.execute("SELECT state FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None
    return str(row[0])


def completed(db: Conn, job_id: int) -> bool:
    return state(db, job_id) == "completed"


def test_an_idle_worker_claims_once_per_lone_job(
        app: App, db: Conn, claims: list[tuple[int, int]], run_worker: Worker) -> None:
    @app.task(name="ping")
    async def ping(job: Job) -> None:
        pass

    before = settled(run_worker, claims)
    for _ in range(8):
        job_id = app.enqueue(db, "ping", {})
        wait_until(functools.partial(completed, db, job_id), timeout=WAIT, message=f"job {job_id} to complete")
    # An empty claim after a job ends follows within milliseconds of its slot freeing.
    time.sleep(0.5)

    # One claim per job, each finding its job: none after a job ended with nothing announced.
    assert [found for _, found in claims[before:]] == [1] * 8


def test_a_drained_worker_with_a_busy_slot_still_runs_a_job_that_becomes_available_later(
        app: App, db: Conn, claims: list[tuple[int, int]], run_worker: Worker) -> None:
    release = threading.Event()

    @app.task(name="hold")
    def hold(job: Job) -> None:
        release.wait(WAIT)

    @app.task(name="later")
    async def later(job: Job) -> None:
        pass

    try:
        settled(run_worker, claims)
        held = app.enqueue(db, "hold", {})
        wait_until(lambda: state(db, held) == "running", timeout=WAIT, message="the holding job to start")
        # Scheduled, then made available by the maintenance leader, which announces it: with a
        # 60 s poll, only that notification can start it while the worker's queue was drained.
        delayed = app.enqueue(db, "later", {}, delay=0.3)
        wait_until(lambda: state(db, delayed) == "completed", timeout=WAIT,
                   message="the delayed job to run while the other one holds its slot")
    finally:
        release.set()
    wait_until(lambda: state(db, held) == "completed", timeout=WAIT, message="the holding job to complete")


@pytest.fixture
def order(claims: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the worker does on its wake-up path, in order: the claim sent, the limits read, the
    listener waiting on its session again (and the handler started, appended by the test's task)."""
    steps: list[str] = []
    notified = ListenSession.notified
    list_scopes = AsyncJobStore.list_limited_scopes
    claim = AsyncJobStore.claim_jobs  # the counting one of the claims fixture

    async def marked_notified(session: ListenSession, seconds: float) -> Any:
        async for item in notified(session, seconds):
            yield item
            steps.append("listener waits again")

    async def marked_scopes(store: AsyncJobStore) -> tuple[list[str], list[str]]:
        steps.append("limits read")
        return await list_scopes(store)

    async def marked_claim(store: AsyncJobStore, *args: Any, **kwargs: Any) -> list[Job]:
        steps.append("claim sent")
        return await claim(store, *args, **kwargs)

    monkeypatch.setattr(ListenSession, "notified", marked_notified)
    monkeypatch.setattr(AsyncJobStore, "list_limited_scopes", marked_scopes)
    monkeypatch.setattr(AsyncJobStore, "claim_jobs", marked_claim)
    return steps


def lone_job_after_idling(app: App, db: Conn, worker: Worker, claims: list[tuple[int, int]], order: list[str],
                          *, idle: float, limits_read_ago: float | None = None) -> None:
    """Let the worker settle and idle, then enqueue one "mark" job and wait until it completed;
    ``order`` then holds what the worker did from the enqueue on."""
    settled(worker, claims)
    time.sleep(idle)
    claimer = worker._loop._claimer
    assert claimer is not None
    if limits_read_ago is not None:
        claimer._limits_read_at = time.monotonic() - limits_read_ago
    del order[:]
    job_id = app.enqueue(db, "mark", {})
    wait_until(functools.partial(completed, db, job_id), timeout=WAIT, message="the job to complete")


@pytest.fixture
def marked_app(app: App, order: list[str]) -> App:
    @app.task(name="mark")
    async def mark(job: Job) -> None:
        order.append("handler started")

    return app


def test_a_lone_jobs_claim_and_handler_come_before_the_rest_of_the_wake_up_path(
        marked_app: App, db: Conn, claims: list[tuple[int, int]], order: list[str],
        monkeypatch: pytest.MonkeyPatch, run_worker: Worker) -> None:
    # What a lone job's wake-up latency is made of on an idle worker: the listener lets the claimer
    # claim before it waits on its session again, and the claimer lets the handler start before
    # the round's bookkeeping (here the limits refresh, made due after the claim but not before:
    # read 150 s ago, with a refresh every 100 s).
    monkeypatch.setattr(claimer_module, "LIMITS_REFRESH_SECONDS", 100.0)
    lone_job_after_idling(marked_app, db, run_worker, claims, order, idle=0.3, limits_read_ago=150)

    # The claim leaves before the listener waits on its session again (which it may do while the
    # claim's answer is on its way), and the handler starts before the limits are read.
    assert order[0] == "claim sent", order
    assert "listener waits again" in order, order
    assert order.index("handler started") < order.index("limits read"), order


def test_a_worker_idle_for_long_claims_a_lone_job_without_reading_its_limits_first(
        marked_app: App, db: Conn, claims: list[tuple[int, int]], order: list[str],
        monkeypatch: pytest.MonkeyPatch, run_worker: Worker) -> None:
    # Its cached limits get far past the refresh interval, but no change is announced while it
    # listens: the claim goes out at once (it used to follow a read of the limits).
    monkeypatch.setattr(claimer_module, "LIMITS_REFRESH_SECONDS", 0.05)
    lone_job_after_idling(marked_app, db, run_worker, claims, order, idle=0.5)

    assert order[0] == "claim sent", order


def test_a_task_limit_set_while_a_worker_idles_binds_its_next_claim(
        app: App, db: Conn, claims: list[tuple[int, int]], run_worker: Worker) -> None:
    # The worker's code declares no limit on "slow"; another deployment's does, and writes it while
    # this worker idles (with fresh cached limits). The change is announced, so the worker reads the
    # limits before its next claim and runs the jobs one at a time, not all three at once.
    active = 0
    most = 0

    @app.task(name="slow")
    async def slow(job: Job) -> None:
        nonlocal active, most
        active += 1
        most = max(most, active)
        await asyncio.sleep(0.3)
        active -= 1

    settled(run_worker, claims)
    db.execute("INSERT INTO pgqueue.task_limits (task, concurrency) VALUES ('slow', 1)")
    ids = [app.enqueue(db, "slow", {}) for _ in range(3)]
    for job_id in ids:
        wait_until(functools.partial(completed, db, job_id), timeout=WAIT, message=f"job {job_id} to complete")

    assert most == 1
