"""The worker, run in-process: handlers, results, progress, retries, timeouts, transactional tasks,
fencing of late acks, and heartbeats that a blocked handler cannot stop.

Each test starts real ``Worker`` threads on a real database with a short lease (2 s) and poll
(0.5 s), and observes only what another connection can see: ``pgqueue.jobs`` and the audit trail
in ``pgqueue.job_events``. Handlers coordinate with the test through ``threading.Event``s, never
through sleeps.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow, dict_row

from pgqueue import App, Backoff, Discard, Job, Retry, Worker
from pgqueue.errors import ConfigurationError
from pgqueue.settings import Settings
from tests.helpers import empty_tables, scratch_database, wait_until

Conn = psycopg.Connection[TupleRow]

LEASE_SECONDS = 2.0
POLL_SECONDS = 0.5
WAIT = 15.0  # generous: a loaded CI machine must not turn a slow pass into a failure

LEDGER_DDL = """
CREATE TABLE public.ledger (job_id bigint NOT NULL, attempt integer NOT NULL, amount integer);
-- Simulates a worker whose heartbeats no longer land (paused, partitioned): while its id is in
-- frozen_workers, every renewal of its row leaves the lease expired.
CREATE TABLE public.frozen_workers (id text PRIMARY KEY);
CREATE FUNCTION public.freeze_lease() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.frozen_workers WHERE id = NEW.id) THEN
        NEW.lease_expires_at := now() - interval '1 minute';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER freeze_lease BEFORE UPDATE ON pgqueue.workers
    FOR EACH ROW EXECUTE FUNCTION public.freeze_lease();
"""


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_dsn(pg_server_dsn: str, template_db: str) -> Iterator[str]:
    with scratch_database(pg_server_dsn, template_db) as database_dsn:
        with psycopg.connect(database_dsn, autocommit=True) as setup:
            setup.execute(LEDGER_DDL)
        yield database_dsn


@pytest.fixture
def dsn(module_dsn: str) -> str:
    """Overrides the per-test database: one per module, emptied before each test (workers commit,
    so a rolled-back transaction cannot isolate them, and a database per test costs ~1 s)."""
    empty_tables(module_dsn, "pgqueue.jobs", "pgqueue.job_events", "pgqueue.workers", "pgqueue.leaders",
                 "pgqueue.queues", "public.ledger", "public.frozen_workers")
    return module_dsn


@pytest.fixture
def settings(dsn: str) -> Settings:
    return Settings(dsn=dsn, lease_seconds=LEASE_SECONDS, poll_seconds=POLL_SECONDS, shutdown_grace_seconds=5)


@pytest.fixture
def app(dsn: str, settings: Settings) -> App:
    return App(dsn, settings=settings)


StartWorker = Callable[..., Worker]


@pytest.fixture
def start_worker(app: App, db: Conn) -> Iterator[StartWorker]:
    """Start an in-process worker thread; every worker started is stopped (gracefully) at teardown."""
    with _WorkerThreads(app, db) as workers:
        yield workers.start


class _WorkerThreads:
    def __init__(self, app: App, db: Conn) -> None:
        self.app = app
        self.db = db
        self.started: list[tuple[Worker, threading.Thread, list[int]]] = []

    def start(self, *, queues: list[str] | None = None, concurrency: int = 4) -> Worker:
        worker = Worker(self.app, queues=queues, concurrency=concurrency, settings=self.app.settings)
        exit_codes: list[int] = []
        thread = threading.Thread(
            target=lambda: exit_codes.append(worker.run(install_signal_handlers=False)),
            name=f"test-worker-{len(self.started)}", daemon=True)
        thread.start()
        self.started.append((worker, thread, exit_codes))
        # The row exists once the heartbeat ran, which is after the worker's loop started (so stop() works).
        wait_until(lambda: not thread.is_alive() or self.db.execute(
            "SELECT 1 FROM pgqueue.workers WHERE id = %s", [worker.worker_id]).fetchone(),
            timeout=WAIT, message="the worker to register")
        assert thread.is_alive(), "the worker thread died while starting"
        return worker

    def stop(self, worker: Worker) -> None:
        for started, thread, exit_codes in self.started:
            if started is worker:
                worker.stop()
                thread.join(timeout=30)
                assert not thread.is_alive(), "the worker did not stop within 30 s"
                assert exit_codes == [0]

    def __enter__(self) -> _WorkerThreads:
        return self

    def __exit__(self, *exc: object) -> None:
        for worker, _, _ in self.started:
            worker.stop()
        for _, thread, _ in self.started:
            thread.join(timeout=30)


@contextmanager
def released(*events: threading.Event) -> Iterator[None]:
    """Set ``events`` on the way out, so a handler blocked on them never outlives its test."""
    try:
        yield
    finally:
        for event in events:
            event.set()


def job(db: Conn, job_id: int) -> dict[str, Any]:
    with db.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT id, task, queue, state, attempt, max_attempts, run_at, finished_at, progress, progress_note,"
            " result, last_error, worker_id, lease_token FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None, f"job {job_id} does not exist"
    return row


def events(db: Conn, job_id: int) -> list[str]:
    return [r[0] for r in db.execute(
        "SELECT event FROM pgqueue.job_events WHERE job_id = %s ORDER BY id", [job_id]).fetchall()]


def wait_for_state(db: Conn, job_id: int, *states: str, timeout: float = WAIT) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        row = job(db, job_id)
        return row if row["state"] in states else None

    row = wait_until(reached, timeout=timeout, message=f"job {job_id} to reach {states}")
    assert row is not None
    return row


# --- lifecycle --------------------------------------------------------------------------------


def test_stop_before_the_worker_started_makes_it_stop_as_soon_as_it_starts(app: App, db: Conn) -> None:
    worker = Worker(app, settings=app.settings)
    worker.stop()
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False}, daemon=True)
    thread.start()
    thread.join(timeout=WAIT)

    assert not thread.is_alive(), "a stop requested before run() was lost: the worker runs forever"
    assert db.execute("SELECT count(*) FROM pgqueue.workers").fetchone() == (0,)  # deregistered on the way out


def test_stop_on_a_worker_that_already_stopped_is_a_no_op(app: App, db: Conn) -> None:
    with _WorkerThreads(app, db) as workers:
        worker = workers.start()
        workers.stop(worker)

        worker.stop()  # e.g. a supervisor's second request racing the worker's own shutdown


# --- running handlers -------------------------------------------------------------------------


def test_sync_and_async_handlers_run_and_their_results_are_stored(
        app: App, db: Conn, start_worker: StartWorker) -> None:
    seen: dict[str, Job] = {}

    @app.task(name="add", queue="math", max_attempts=4)
    def add(job: Job, a: int, b: int) -> dict[str, int]:
        seen["add"] = job
        return {"sum": a + b}

    @app.task(name="greet")
    async def greet(job: Job, name: str) -> str:
        await asyncio.sleep(0)
        seen["greet"] = job
        return f"hello {name}"

    add_id = app.enqueue(None, "add", {"a": 2, "b": 3})
    greet_id = app.enqueue(None, "greet", {"name": "ada"})
    start_worker()

    assert wait_for_state(db, add_id, "completed")["result"] == {"sum": 5}
    assert wait_for_state(db, greet_id, "completed")["result"] == "hello ada"
    assert events(db, add_id) == ["enqueued", "claimed", "completed"]
    handled = seen["add"]
    assert (handled.id, handled.task, handled.queue, handled.args, handled.attempt, handled.max_attempts) == (
        add_id, "add", "math", {"a": 2, "b": 3}, 1, 4)
    assert handled.enqueued_at.tzinfo is not None


def test_a_notification_wakes_an_idle_worker_long_before_its_poll_interval(
        dsn: str, db: Conn, start_worker: StartWorker, app: App) -> None:
    app.settings = Settings(dsn=dsn, lease_seconds=LEASE_SECONDS, poll_seconds=60, shutdown_grace_seconds=5)

    @app.task(name="ping")
    def ping(job: Job) -> str:
        return "pong"

    start_worker()
    job_id = app.enqueue(None, "ping", {})

    # With a 60 s poll, only LISTEN/NOTIFY can get this done within the wait.
    wait_for_state(db, job_id, "completed", timeout=10)


def test_a_delayed_job_runs_once_its_time_has_come(app: App, db: Conn, start_worker: StartWorker) -> None:
    @app.task(name="later")
    def later(job: Job) -> str:
        return "done"

    start_worker()
    job_id = app.enqueue(None, "later", {}, delay=0.5)
    assert job(db, job_id)["state"] == "scheduled"

    wait_for_state(db, job_id, "completed")
    assert events(db, job_id) == ["enqueued", "available", "claimed", "completed"]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_set_progress_is_visible_to_other_connections_while_the_job_runs(
        app: App, db: Conn, start_worker: StartWorker, kind: str) -> None:
    finish = threading.Event()

    if kind == "sync":
        @app.task(name="report")
        def report(job: Job) -> str:
            job.set_progress(40, "note")
            finish.wait(WAIT)
            return "done"
    else:
        @app.task(name="report")
        async def report_async(job: Job) -> str:
            job.set_progress(40, "note")
            await asyncio.to_thread(finish.wait, WAIT)
            return "done"

    job_id = app.enqueue(None, "report", {})
    start_worker()
    with released(finish):
        running = wait_until(lambda: (row := job(db, job_id))["progress"] == 40 and row,
                             timeout=WAIT, message="progress 40 to be visible")
        assert running["state"] == "running"
        assert running["progress_note"] == "note"

    done = wait_for_state(db, job_id, "completed")
    assert (done["progress"], done["progress_note"]) == (40, "note")


# --- failures and retries ---------------------------------------------------------------------


def test_a_failing_job_is_retried_until_max_attempts_then_failed_with_its_error(
        app: App, db: Conn, start_worker: StartWorker) -> None:
    attempts: list[int] = []

    @app.task(name="flaky", max_attempts=3, backoff=Backoff.fixed(0))
    def flaky(job: Job) -> None:
        attempts.append(job.attempt)
        raise ValueError(f"boom on attempt {job.attempt}")

    job_id = app.enqueue(None, "flaky", {})
    start_worker()

    failed = wait_for_state(db, job_id, "failed")
    assert attempts == [1, 2, 3]
    assert failed["attempt"] == 3
    assert failed["finished_at"] is not None
    error = failed["last_error"]
    assert error["type"] == "ValueError"
    assert error["message"] == "boom on attempt 3"
    assert "Traceback" in error["traceback"]
    assert "in flaky" in error["traceback"]
    assert events(db, job_id) == [
        "enqueued", "claimed", "retry_scheduled", "claimed", "retry_scheduled", "claimed", "failed"]


def test_retry_with_a_delay_schedules_the_next_attempt_at_that_time(
        app: App, db: Conn, start_worker: StartWorker) -> None:
    @app.task(name="rate-limited", max_attempts=5)
    def rate_limited(job: Job) -> None:
        raise Retry(delay=timedelta(seconds=30), reason="provider said later")

    job_id = app.enqueue(None, "rate-limited", {})
    start_worker()

    scheduled = wait_for_state(db, job_id, "scheduled")
    row = db.execute(
        "SELECT j.run_at - e.at FROM pgqueue.jobs AS j JOIN pgqueue.job_events AS e ON e.job_id = j.id"
        " WHERE j.id = %s AND e.event = 'retry_scheduled'", [job_id]).fetchone()
    assert row is not None
    # The outcome statement's now() stamps both the event and run_at: the gap is the delay exactly.
    assert row[0] == timedelta(seconds=30)
    assert scheduled["attempt"] == 1
    assert scheduled["last_error"]["type"] == "Retry"
    assert scheduled["last_error"]["message"] == "provider said later"


def test_retry_on_the_last_attempt_fails_the_job(app: App, db: Conn, start_worker: StartWorker) -> None:
    @app.task(name="out-of-tries", max_attempts=1)
    def out_of_tries(job: Job) -> None:
        raise Retry(delay=1)

    job_id = app.enqueue(None, "out-of-tries", {})
    start_worker()

    failed = wait_for_state(db, job_id, "failed")
    assert (failed["attempt"], failed["last_error"]["type"]) == (1, "Retry")
    assert events(db, job_id)[-1] == "failed"


@pytest.mark.parametrize("delay", [math.inf, math.nan, 1e300])
def test_a_retry_delay_the_database_cannot_store_does_not_wedge_the_worker(
        app: App, db: Conn, start_worker: StartWorker, delay: float) -> None:
    @app.task(name="odd-retry", max_attempts=2, backoff=Backoff.fixed(0))
    def odd_retry(job: Job) -> None:
        raise Retry(delay=delay)

    @app.task(name="plain-failure", max_attempts=1)
    def plain_failure(job: Job) -> None:
        raise ValueError("ordinary")

    odd = app.enqueue(None, "odd-retry", {})
    start_worker()

    # Whatever happens to the odd job, it must leave 'running', and the worker must go on acking.
    wait_until(lambda: job(db, odd)["state"] != "running" and job(db, odd)["attempt"] >= 1, timeout=WAIT,
               message="the odd-retry job to leave running")
    later = app.enqueue(None, "plain-failure", {})
    assert wait_for_state(db, later, "failed")["last_error"]["type"] == "ValueError"


@pytest.mark.parametrize("raise_it", [
    lambda: ValueError("bad byte \x00 in input"),
    lambda: Discard("gone\x00"),
    lambda: Retry(delay=0, reason="later\x00"),
])
def test_an_error_message_with_a_nul_character_is_stored_and_does_not_wedge_the_worker(
        app: App, db: Conn, start_worker: StartWorker, raise_it: Callable[[], Exception]) -> None:
    @app.task(name="nul-error", max_attempts=1)
    def nul_error(job: Job) -> None:
        raise raise_it()

    @app.task(name="plain-failure", max_attempts=1)
    def plain_failure(job: Job) -> None:
        raise ValueError("ordinary")

    odd = app.enqueue(None, "nul-error", {})
    start_worker()

    failed = wait_for_state(db, odd, "failed")  # jsonb refuses \u0000: the error must be stored without it
    assert "\x00" not in failed["last_error"]["message"]
    later = app.enqueue(None, "plain-failure", {})
    assert wait_for_state(db, later, "failed")["last_error"]["message"] == "ordinary"


@pytest.mark.parametrize("note", ["half\x00way", 42])
def test_a_progress_note_the_database_cannot_store_fails_only_that_call(
        app: App, db: Conn, start_worker: StartWorker, note: Any) -> None:
    @app.task(name="odd-note", max_attempts=1)
    def odd_note(job: Job) -> str:
        try:
            job.set_progress(50, note)
        except (ValueError, TypeError) as exc:
            return f"refused: {type(exc).__name__}"
        return "accepted"

    @app.task(name="after")
    def after(job: Job) -> str:
        return "ok"

    job_id = app.enqueue(None, "odd-note", {})
    start_worker()

    assert wait_for_state(db, job_id, "completed", "failed")["state"] == "completed"
    later = app.enqueue(None, "after", {})
    assert wait_for_state(db, later, "completed")["result"] == "ok"


def test_backoff_past_attempt_1024_still_schedules_a_retry(app: App, db: Conn, start_worker: StartWorker) -> None:
    @app.task(name="persistent", max_attempts=5000, backoff=Backoff.exponential(initial=1, cap=60, jitter=False))
    def persistent(job: Job) -> None:
        raise ValueError("again")

    job_id = app.enqueue(None, "persistent", {})
    db.execute("UPDATE pgqueue.jobs SET attempt = 1100 WHERE id = %s", [job_id])  # as if it had failed that often
    start_worker()

    retried = wait_for_state(db, job_id, "scheduled")  # not stuck in running: 2.0 ** 1100 overflows a float
    assert retried["attempt"] == 1101
    row = db.execute("SELECT run_at - now() <= interval '60 seconds' FROM pgqueue.jobs WHERE id = %s",
                     [job_id]).fetchone()
    assert row == (True,)


def test_discard_fails_the_job_at_once_whatever_attempts_are_left(
        app: App, db: Conn, start_worker: StartWorker) -> None:
    @app.task(name="unsubscribed", max_attempts=5)
    def unsubscribed(job: Job) -> None:
        raise Discard("recipient unsubscribed")

    job_id = app.enqueue(None, "unsubscribed", {})
    start_worker()

    failed = wait_for_state(db, job_id, "failed")
    assert failed["attempt"] == 1
    assert failed["last_error"]["type"] == "Discard"
    assert failed["last_error"]["message"] == "recipient unsubscribed"
    assert events(db, job_id)[-1] == "discarded"


def test_retry_on_and_discard_on_choose_which_errors_are_retried(
        app: App, db: Conn, start_worker: StartWorker) -> None:
    @app.task(name="network-only", max_attempts=3, backoff=Backoff.fixed(0), retry_on=(ConnectionError,))
    def network_only(job: Job, error: str) -> None:
        raise ConnectionError("reset") if error == "network" else ValueError("bad input")

    @app.task(name="discard-keyerror", max_attempts=3, backoff=Backoff.fixed(0), discard_on=(KeyError,))
    def discard_keyerror(job: Job) -> None:
        raise KeyError("missing")

    retried = app.enqueue(None, "network-only", {"error": "network"})
    not_retried = app.enqueue(None, "network-only", {"error": "value"})
    discarded = app.enqueue(None, "discard-keyerror", {})
    start_worker()

    assert wait_for_state(db, retried, "failed")["attempt"] == 3
    assert events(db, retried).count("retry_scheduled") == 2
    for job_id, error_type in ((not_retried, "ValueError"), (discarded, "KeyError")):
        failed = wait_for_state(db, job_id, "failed")
        assert (failed["attempt"], failed["last_error"]["type"]) == (1, error_type)
        assert "retry_scheduled" not in events(db, job_id)


@pytest.mark.parametrize("timeout", [None, 30.0])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_timeout_error_the_handler_raises_is_its_own_error_not_the_task_timeout(
        app: App, db: Conn, start_worker: StartWorker, kind: str, timeout: float | None) -> None:
    # A network call's TimeoutError (socket.timeout, asyncio.TimeoutError) was taken for the task's
    # own timeout: with none set, formatting it failed the job with a TypeError instead of a retry.
    if kind == "sync":
        @app.task(name="call-api", max_attempts=2, backoff=Backoff.fixed(0), timeout=timeout)
        def call_api(job: Job) -> None:
            raise TimeoutError("the API did not answer")
    else:
        @app.task(name="call-api", max_attempts=2, backoff=Backoff.fixed(0), timeout=timeout)
        async def call_api_async(job: Job) -> None:
            raise TimeoutError("the API did not answer")

    job_id = app.enqueue(None, "call-api", {})
    start_worker()

    failed = wait_for_state(db, job_id, "failed")
    assert (failed["attempt"], failed["last_error"]["type"], failed["last_error"]["message"]) == (
        2, "TimeoutError", "the API did not answer")
    assert events(db, job_id).count("retry_scheduled") == 1


@pytest.mark.parametrize("options", [{"retry_on": ("TimeoutError",)}, {"discard_on": (KeyError, 1)},
                                     {"retry_on": TimeoutError}, {"discard_on": "KeyError"}])
def test_retry_on_and_discard_on_that_are_not_tuples_of_exception_classes_are_refused_at_declaration(
        options: dict[str, Any]) -> None:
    # retry_on=("TimeoutError",) was accepted; the first failure then raised TypeError inside the
    # worker's own isinstance check, so the attempt got no outcome and the job stayed running under
    # the live worker's lease, never rescued. A bare class failed with "'type' object is not iterable".
    app = App("postgresql://unused@127.0.0.1:1/unused")
    with pytest.raises(ConfigurationError, match=r"task 'bad': (retry_on|discard_on) must be a tuple of exception"):
        app.task(name="bad", **options)(lambda job: None)


@pytest.mark.parametrize("timeout", [0, -1, math.nan])
def test_a_timeout_that_is_not_a_positive_number_is_refused_at_declaration(timeout: float) -> None:
    # timeout=nan passed the "<= 0" check, and every attempt then failed at once with
    # "attempt exceeded the nans timeout".
    app = App("postgresql://unused@127.0.0.1:1/unused")
    with pytest.raises(ConfigurationError, match=r"task 'bad': timeout .* must be > 0"):
        app.task(name="bad", timeout=timeout)(lambda job: None)


def test_a_backoff_that_is_not_a_backoff_is_refused_at_declaration() -> None:
    # backoff=Backoff.exponential (the method, not called) was accepted; the first failure then left
    # the job running forever (see the test below).
    app = App("postgresql://unused@127.0.0.1:1/unused")
    with pytest.raises(ConfigurationError, match=r"task 'bad': backoff must be a pgqueue.Backoff"):
        app.task(name="bad", backoff=Backoff.exponential)(lambda job: None)  # type: ignore[call-overload]


def test_a_retry_policy_that_raises_fails_the_job_instead_of_leaving_it_running(
        app: App, db: Conn, start_worker: StartWorker) -> None:
    # When deciding retry or failure itself raised, the attempt got no outcome: the job stayed
    # 'running' under the live worker's lease, never rescued while that worker lived.
    @app.task(name="broken-policy", max_attempts=3)
    def broken_policy(job: Job) -> None:
        raise ValueError("the handler's own error")

    broken_policy.backoff = None  # type: ignore[assignment]  # past the declaration's checks
    job_id = app.enqueue(None, "broken-policy", {})
    start_worker()

    failed = wait_for_state(db, job_id, "failed")
    assert (failed["attempt"], failed["last_error"]["type"]) == (1, "AttributeError")  # the policy's error
    assert "the handler's own error" in failed["last_error"]["traceback"]  # and, chained, the handler's


@pytest.mark.parametrize("result", [math.nan, {"ratio": math.inf}, "nul \x00", {1, 2}])
def test_a_result_jsonb_refuses_fails_the_job_cleanly_instead_of_leaving_it_running(
        app: App, db: Conn, start_worker: StartWorker, result: Any) -> None:
    @app.task(name="bad-result", max_attempts=5)
    def bad_result(job: Job) -> Any:
        return result

    job_id = app.enqueue(None, "bad-result", {})
    start_worker()

    failed = wait_for_state(db, job_id, "failed")
    assert failed["attempt"] == 1  # retrying would redo the side effects for the same bad result
    assert failed["result"] is None
    assert "not JSON-serialisable" in failed["last_error"]["message"]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_transactional_result_jsonb_refuses_fails_the_job_at_once_and_rolls_back_its_writes(
        app: App, db: Conn, start_worker: StartWorker, kind: str) -> None:
    insert = "INSERT INTO public.ledger (job_id, attempt, amount) VALUES (%s, %s, 1)"

    if kind == "sync":
        @app.task(name="bad-tx-result", transactional=True, max_attempts=3, backoff=Backoff.fixed(0))
        def bad_tx_result(job: Job) -> float:
            job.connection.execute(insert, [job.id, job.attempt])
            return math.nan
    else:
        @app.task(name="bad-tx-result", transactional=True, max_attempts=3, backoff=Backoff.fixed(0))
        async def bad_tx_result_async(job: Job) -> float:
            await job.connection.execute(insert, [job.id, job.attempt])
            return math.nan

    job_id = app.enqueue(None, "bad-tx-result", {})
    start_worker()

    failed = wait_for_state(db, job_id, "failed")
    assert ledger(db) == []
    # As for other tasks: the same handler would only produce the same bad result again.
    assert failed["attempt"] == 1, events(db, job_id)
    assert "not JSON-serialisable" in failed["last_error"]["message"]


def test_an_unknown_task_fails_the_job_with_a_not_registered_error_and_keeps_it(
        app: App, db: Conn, start_worker: StartWorker) -> None:
    job_id = app.enqueue(None, "nobody-registered-this", {"n": 1}, max_attempts=5)
    start_worker()

    failed = wait_for_state(db, job_id, "failed")
    assert failed["attempt"] == 1
    assert failed["last_error"]["type"] == "TaskNotRegistered"
    assert "not registered" in failed["last_error"]["message"]
    assert "nobody-registered-this" in failed["last_error"]["message"]


def test_a_handler_past_its_timeout_is_failed_and_does_not_hold_the_worker_slot(
        app: App, db: Conn, start_worker: StartWorker) -> None:
    stuck = threading.Event()  # never set while the test runs: the sync handler ignores its timeout
    sync_returned = threading.Event()

    @app.task(name="stuck-sync", timeout=0.5, max_attempts=2, backoff=Backoff.fixed(0), priority="critical")
    def stuck_sync(job: Job) -> None:
        stuck.wait(30)  # blocks its thread like time.sleep(30); set at teardown so no thread outlives the test
        sync_returned.set()

    @app.task(name="stuck-async", timeout=0.5, max_attempts=1, priority="high")
    async def stuck_async(job: Job) -> None:
        await asyncio.sleep(30)

    @app.task(name="quick")
    def quick(job: Job, n: int) -> int:
        return n

    slow_sync = app.enqueue(None, "stuck-sync", {})
    slow_async = app.enqueue(None, "stuck-async", {})
    quick_ids = [app.enqueue(None, "quick", {"n": n}) for n in range(5)]
    with released(stuck):
        # One slot: the quick jobs can only run if a timed-out handler gives its slot back.
        start_worker(concurrency=1)

        for job_id in quick_ids:
            wait_for_state(db, job_id, "completed")
        timed_out = wait_for_state(db, slow_sync, "failed")
        assert not sync_returned.is_set(), "the stuck handler's thread should still be blocked"

    assert timed_out["attempt"] == 2
    assert timed_out["last_error"]["type"] == "JobTimeout"
    assert events(db, slow_sync) == ["enqueued", "claimed", "retry_scheduled", "claimed", "failed"]
    async_failed = wait_for_state(db, slow_async, "failed")
    assert (async_failed["attempt"], async_failed["last_error"]["type"]) == (1, "JobTimeout")


# --- transactional tasks ----------------------------------------------------------------------


def _register_booking(app: App, kind: str, *, fail: bool = False,
                      hold_first_attempt: tuple[threading.Event, threading.Event] | None = None) -> None:
    """A transactional task writing one ledger row per attempt through ``job.connection``."""
    insert = "INSERT INTO public.ledger (job_id, attempt, amount) VALUES (%s, %s, %s)"

    if kind == "sync":
        @app.task(name="book", transactional=True, max_attempts=2, backoff=Backoff.fixed(0))
        def book(job: Job, amount: int) -> dict[str, int]:
            job.connection.execute(insert, [job.id, job.attempt, amount])
            if hold_first_attempt is not None and job.attempt == 1:
                started, proceed = hold_first_attempt
                started.set()
                proceed.wait(WAIT)
            if fail:
                raise RuntimeError("card declined")
            return {"booked": amount, "attempt": job.attempt}
    else:
        @app.task(name="book", transactional=True, max_attempts=2, backoff=Backoff.fixed(0))
        async def book_async(job: Job, amount: int) -> dict[str, int]:
            await job.connection.execute(insert, [job.id, job.attempt, amount])
            if hold_first_attempt is not None and job.attempt == 1:
                started, proceed = hold_first_attempt
                started.set()
                await asyncio.to_thread(proceed.wait, WAIT)
            if fail:
                raise RuntimeError("card declined")
            return {"booked": amount, "attempt": job.attempt}


def ledger(db: Conn) -> list[tuple[int, int, int]]:
    return [tuple(r) for r in db.execute("SELECT job_id, attempt, amount FROM public.ledger ORDER BY attempt")]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_transactional_handler_writes_commit_in_the_transaction_that_completes_the_job(
        app: App, db: Conn, start_worker: StartWorker, kind: str) -> None:
    _register_booking(app, kind)
    job_id = app.enqueue(None, "book", {"amount": 42})
    start_worker()

    completed = wait_for_state(db, job_id, "completed")
    assert completed["result"] == {"booked": 42, "attempt": 1}
    assert ledger(db) == [(job_id, 1, 42)]
    # One transaction: the ledger row, the job's completion and its audit row share a transaction id.
    xids = db.execute(
        "SELECT (SELECT xmin::text FROM public.ledger WHERE job_id = %(id)s),"
        "       (SELECT xmin::text FROM pgqueue.jobs WHERE id = %(id)s),"
        "       (SELECT xmin::text FROM pgqueue.job_events WHERE job_id = %(id)s AND event = 'completed')",
        {"id": job_id}).fetchone()
    assert xids is not None
    assert len(set(xids)) == 1, f"written in different transactions: {xids}"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_transactional_handler_that_raises_leaves_none_of_its_writes(
        app: App, db: Conn, start_worker: StartWorker, kind: str) -> None:
    _register_booking(app, kind, fail=True)
    job_id = app.enqueue(None, "book", {"amount": 42})
    start_worker()

    failed = wait_for_state(db, job_id, "failed")
    assert failed["attempt"] == 2
    assert failed["last_error"]["message"] == "card declined"
    assert ledger(db) == []


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_transactional_handler_that_lost_its_lease_rolls_back_and_does_not_complete_the_job(
        app: App, db: Conn, dsn: str, kind: str) -> None:
    started, proceed = threading.Event(), threading.Event()
    _register_booking(app, kind, hold_first_attempt=(started, proceed))
    job_id = app.enqueue(None, "book", {"amount": 7})

    with _WorkerThreads(app, db) as workers, released(proceed):
        worker = workers.start(concurrency=2)
        assert started.wait(WAIT), "the first attempt never started"
        # What the rescuer does to a job whose worker stopped heartbeating: back to available, token cleared.
        db.execute("UPDATE pgqueue.jobs SET state = 'available', lease_token = NULL WHERE id = %s", [job_id])

        # The worker's free slot re-runs it (attempt 2) while attempt 1 is still inside its transaction.
        completed = wait_for_state(db, job_id, "completed")
        assert completed["attempt"] == 2
        proceed.set()
        workers.stop(worker)  # graceful: attempt 1 finishes, finds its lease gone, and rolls back

    assert ledger(db) == [(job_id, 2, 7)]
    final = job(db, job_id)
    assert (final["state"], final["attempt"], final["result"]) == ("completed", 2, {"booked": 7, "attempt": 2})
    assert events(db, job_id).count("completed") == 1


def test_a_late_ack_from_a_worker_whose_lease_expired_is_refused(
        app: App, db: Conn, start_worker: StartWorker) -> None:
    started, proceed = threading.Event(), threading.Event()

    @app.task(name="slow", queue="slow", max_attempts=3)
    def slow(job: Job) -> str:
        if job.attempt == 1:
            started.set()
            proceed.wait(WAIT)
            return "late first run"
        return "second run"

    job_id = app.enqueue(None, "slow", {})
    with _WorkerThreads(app, db) as workers, released(proceed):
        paused = workers.start(queues=["slow"], concurrency=1)
        assert started.wait(WAIT), "the first attempt never started"

        # The worker goes quiet: its lease expires and its heartbeats no longer land.
        db.execute("INSERT INTO public.frozen_workers (id) VALUES (%s)", [paused.worker_id])
        db.execute("UPDATE pgqueue.workers SET lease_expires_at = now() - interval '1 minute' WHERE id = %s",
                   [paused.worker_id])
        wait_until(lambda: "rescued" in events(db, job_id), timeout=WAIT, message="the job to be rescued")

        rescuer = workers.start(queues=["slow"], concurrency=1)
        second = wait_for_state(db, job_id, "completed")
        assert (second["attempt"], second["result"], second["worker_id"]) == (2, "second run", rescuer.worker_id)

        proceed.set()
        workers.stop(paused)  # its first attempt returns now and tries to ack

    final = job(db, job_id)
    assert (final["state"], final["attempt"], final["result"]) == ("completed", 2, "second run")
    trail = db.execute(
        "SELECT event, attempt, worker_id FROM pgqueue.job_events WHERE job_id = %s ORDER BY id", [job_id]).fetchall()
    assert trail == [
        ("enqueued", 0, None),
        ("claimed", 1, paused.worker_id),
        ("rescued", 1, paused.worker_id),
        ("claimed", 2, rescuer.worker_id),
        ("completed", 2, rescuer.worker_id),
    ]


def test_a_job_rescued_with_no_attempts_left_is_failed_and_the_late_ack_cannot_revive_it(
        app: App, db: Conn) -> None:
    started, proceed = threading.Event(), threading.Event()

    @app.task(name="last-chance", max_attempts=1)
    def last_chance(job: Job) -> str:
        started.set()
        proceed.wait(WAIT)
        return "too late"

    job_id = app.enqueue(None, "last-chance", {})
    with _WorkerThreads(app, db) as workers, released(proceed):
        paused = workers.start(concurrency=1)
        assert started.wait(WAIT), "the attempt never started"
        db.execute("INSERT INTO public.frozen_workers (id) VALUES (%s)", [paused.worker_id])
        db.execute("UPDATE pgqueue.workers SET lease_expires_at = now() - interval '1 minute' WHERE id = %s",
                   [paused.worker_id])

        failed = wait_for_state(db, job_id, "failed")
        proceed.set()
        workers.stop(paused)

    assert failed["last_error"]["type"] == "LeaseExpired"
    final = job(db, job_id)
    assert (final["state"], final["attempt"], final["result"]) == ("failed", 1, None)
    assert events(db, job_id) == ["enqueued", "claimed", "rescued"]


# --- heartbeats -------------------------------------------------------------------------------


def test_an_async_handler_blocking_the_event_loop_does_not_stop_the_heartbeat(
        app: App, db: Conn, start_worker: StartWorker) -> None:
    steady_started, steady_finish = threading.Event(), threading.Event()
    blocking, unblocked = threading.Event(), threading.Event()

    @app.task(name="steady")
    def steady(job: Job) -> str:
        steady_started.set()
        steady_finish.wait(WAIT)
        return "steady"

    @app.task(name="hog")
    async def hog(job: Job) -> str:
        blocking.set()
        time.sleep(2 * LEASE_SECONDS)  # noqa: ASYNC251  # the bug under test: a handler blocking the loop
        unblocked.set()
        return "hog"

    steady_id = app.enqueue(None, "steady", {})
    worker = start_worker(concurrency=2)
    with released(steady_finish):
        assert steady_started.wait(WAIT)
        hog_id = app.enqueue(None, "hog", {})
        assert blocking.wait(WAIT), "the blocking handler never started"

        beats: set[Any] = set()
        while not unblocked.is_set():
            row = db.execute(
                "SELECT heartbeat_at, lease_expires_at > now() FROM pgqueue.workers WHERE id = %s",
                [worker.worker_id]).fetchone()
            assert row is not None, "the worker row disappeared while the event loop was blocked"
            assert row[1], "the worker's lease expired while the event loop was blocked"
            beats.add(row[0])
            time.sleep(0.1)  # sampling an invariant for as long as the loop is blocked, not waiting for it
        # The heartbeat renews every lease/4 = 0.5 s; over a 4 s block it must have landed several times.
        assert len(beats) >= 4, f"only {len(beats)} heartbeats while the event loop was blocked"

    assert wait_for_state(db, hog_id, "completed")["attempt"] == 1
    assert wait_for_state(db, steady_id, "completed")["attempt"] == 1
    rescued = db.execute("SELECT count(*) FROM pgqueue.job_events WHERE event = 'rescued'").fetchone()
    assert rescued == (0,)
