"""``Worker.run_until_empty``: run what is left for the worker's queues, then stop and return.

Each test runs the worker in a thread it joins with a bound far above the work's own duration: a
worker that waited for work it should not wait for would never return, and the test fails on the
bound instead of hanging. What ran is read from ``pgqueue.jobs`` on another connection.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

import psycopg
import pytest

from pgqueue import App, Backoff, Job, JobSpec, Worker
from pgqueue.settings import Settings

BOUND = 60.0  # seconds; the work in each test takes well under one
T = TypeVar("T")


@pytest.fixture
def app(dsn: str) -> App:
    return App(dsn, settings=Settings(dsn=dsn, lease_seconds=2, poll_seconds=0.5, shutdown_grace_seconds=5))


def returns(run: Callable[[], T]) -> T:
    """``run()``'s result; fails the test if it has not returned within BOUND."""
    codes: list[T] = []
    thread = threading.Thread(target=lambda: codes.append(run()), daemon=True)
    thread.start()
    thread.join(BOUND)
    assert not thread.is_alive(), f"run_until_empty did not return within {BOUND:g}s"
    assert codes, "run_until_empty raised (see the thread's traceback above)"
    return codes[0]


def states(dsn: str) -> dict[int, tuple[str, int]]:
    with psycopg.connect(dsn) as conn:
        return {job_id: (state, attempt)
                for job_id, state, attempt in conn.execute("SELECT id, state, attempt FROM pgqueue.jobs")}


def test_run_until_empty_runs_every_job_enqueued_before_and_returns(app: App, dsn: str) -> None:
    @app.task(name="sync-work")
    def sync_work(job: Job, n: int) -> int:
        return n

    @app.task(name="async-work")
    async def async_work(job: Job, n: int) -> int:
        await asyncio.sleep(0)
        return n

    ids = [app.enqueue(None, "sync-work" if n % 2 else "async-work", {"n": n}) for n in range(30)]
    worker = Worker(app, concurrency=4)

    assert returns(worker.run_until_empty) == 0

    assert states(dsn) == {job_id: ("completed", 1) for job_id in ids}
    assert (worker.completed, worker.failed) == (30, 0)


def test_run_until_empty_runs_the_follow_up_jobs_that_handlers_enqueue(app: App, dsn: str) -> None:
    @app.task(name="chain")
    def chain(job: Job, left: int) -> None:
        if left:  # on a connection of its own, committed before the handler returns
            app.enqueue(None, "chain", {"left": left - 1})

    @app.task(name="fan-out", transactional=True)
    def fan_out(job: Job) -> None:  # committed with the job's completion
        app.enqueue_many(job.connection, [JobSpec("chain", {"left": 1}) for _ in range(3)])

    app.enqueue(None, "chain", {"left": 4})
    app.enqueue(None, "fan-out")

    assert returns(Worker(app, concurrency=2).run_until_empty) == 0

    found = states(dsn)
    assert len(found) == 1 + 4 + 1 + 3 * 2  # the chain's five links, fan-out, three chains of two
    assert set(found.values()) == {("completed", 1)}


def test_run_until_empty_runs_retries_without_backoff_until_the_job_succeeds(app: App, dsn: str) -> None:
    @app.task(name="flaky", max_attempts=5, backoff=Backoff.fixed(0))
    def flaky(job: Job) -> int:
        if job.attempt < 3:
            raise RuntimeError(f"attempt {job.attempt} fails")
        return job.attempt

    job_id = app.enqueue(None, "flaky")

    assert returns(Worker(app).run_until_empty) == 0

    assert states(dsn) == {job_id: ("completed", 3)}


def test_run_until_empty_does_not_wait_for_jobs_scheduled_in_the_future(app: App, dsn: str) -> None:
    ran: list[int] = []

    @app.task(name="work")
    def work(job: Job) -> None:
        ran.append(job.id)

    later = app.enqueue(None, "work", delay=3600)
    now = app.enqueue(None, "work")
    due = app.enqueue(None, "work", delay=3600)
    with psycopg.connect(dsn) as conn:  # scheduled, and due already: staged by the leader, then run
        conn.execute("UPDATE pgqueue.jobs SET run_at = now() - interval '1 second' WHERE id = %s", [due])

    assert returns(Worker(app).run_until_empty) == 0

    assert sorted(ran) == sorted([now, due])
    assert states(dsn)[later] == ("scheduled", 0)


def test_run_until_empty_waits_only_for_the_queues_it_serves(app: App, dsn: str) -> None:
    @app.task(name="work")
    def work(job: Job) -> None:
        pass

    mine = app.enqueue(None, "work", queue="mine")
    other = app.enqueue(None, "work", queue="other")

    assert returns(Worker(app, queues=["mine"]).run_until_empty) == 0

    found = states(dsn)
    assert (found[mine], found[other]) == (("completed", 1), ("available", 0))


def test_run_until_empty_async_runs_on_the_callers_event_loop(app: App, dsn: str) -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    @app.task(name="work")
    async def work(job: Job) -> None:
        loops.append(asyncio.get_running_loop())

    ids = [app.enqueue(None, "work") for _ in range(3)]

    async def main() -> tuple[int, asyncio.AbstractEventLoop]:
        return await Worker(app).run_until_empty_async(), asyncio.get_running_loop()

    code, loop = returns(lambda: asyncio.run(main()))

    assert code == 0
    assert loops == [loop] * 3
    assert states(dsn) == {job_id: ("completed", 1) for job_id in ids}


def test_running_a_worker_a_second_time_raises_instead_of_silently_doing_nothing(app: App, dsn: str) -> None:
    # A worker runs once. Its second run used to return 0 at once with the new jobs left available,
    # which a script or test that drains twice with the same Worker took for success.
    @app.task(name="work")
    def work(job: Job) -> None: ...

    worker = Worker(app, concurrency=1)
    first = app.enqueue(None, "work")
    assert returns(worker.run_until_empty) == 0
    second = app.enqueue(None, "work")
    with pytest.raises(RuntimeError, match="runs once"):
        worker.run_until_empty()
    with pytest.raises(RuntimeError, match="runs once"):
        asyncio.run(worker.run_async())
    assert states(dsn) == {first: ("completed", 1), second: ("available", 0)}


def test_a_worker_refused_signal_handlers_off_the_main_thread_runs_when_asked_again_without(
        app: App, dsn: str) -> None:
    # The refusal says to pass install_signal_handlers=False; doing so with the same Worker used
    # to raise "a Worker runs once", the refused attempt counting as its run.
    @app.task(name="work")
    def work(job: Job) -> None: ...

    worker = Worker(app, concurrency=1)
    job_id = app.enqueue(None, "work")
    refusals: list[BaseException] = []

    def refused() -> int:
        try:
            return worker.run_until_empty(install_signal_handlers=True)
        except RuntimeError as exc:
            refusals.append(exc)
            return -1

    assert returns(refused) == -1
    assert "install_signal_handlers=False" in str(refusals[0])
    assert returns(worker.run_until_empty) == 0
    assert states(dsn) == {job_id: ("completed", 1)}


def test_run_until_empty_inside_a_running_event_loop_says_to_await_the_async_twin(app: App, dsn: str) -> None:
    @app.task(name="quick")
    def quick(job: Job) -> None: ...

    job_id = quick.enqueue(None)

    async def an_async_test() -> None:
        with pytest.raises(RuntimeError, match=r"run_until_empty_async\(\)"):
            Worker(app).run_until_empty()
        await Worker(app).run_until_empty_async()

    asyncio.run(an_async_test())
    assert states(dsn)[job_id] == ("completed", 1)
