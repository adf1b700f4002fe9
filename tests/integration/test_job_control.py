"""Job control from outside a running handler: cancelling a running job, Snooze, and circuit
breakers, with in-process workers on a real database.

Each test observes only what another connection can see (``pgqueue.jobs``,
``pgqueue.circuit_breakers`` and the audit trail). The multi-process behaviour (several worker
processes, SIGKILL of a trial's worker, the CLI) is in ``tests/e2e/test_job_control_processes.py``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow, dict_row

from pgqueue import Backoff, CircuitBreaker, Job, Snooze, Worker, admin
from pgqueue._db.breakers import AsyncBreakerStore
from pgqueue.app import App
from pgqueue.errors import BreakerNotFound, InvalidJobState, JobNotFound
from pgqueue.settings import Settings
from tests.helpers import empty_tables, scratch_database, wait_until

Conn = psycopg.Connection[TupleRow]

LEASE_SECONDS = 2.0
POLL_SECONDS = 0.5
WAIT = 15.0

LEDGER_DDL = "CREATE TABLE public.ledger (job_id bigint NOT NULL, attempt integer NOT NULL)"


@pytest.fixture(scope="module")
def module_dsn(pg_server_dsn: str, template_db: str) -> Iterator[str]:
    with scratch_database(pg_server_dsn, template_db) as database_dsn:
        with psycopg.connect(database_dsn, autocommit=True) as setup:
            setup.execute(LEDGER_DDL)
        yield database_dsn


@pytest.fixture
def dsn(module_dsn: str) -> str:
    empty_tables(module_dsn, "pgqueue.jobs", "pgqueue.job_events", "pgqueue.workers", "pgqueue.leaders",
                 "pgqueue.queues", "pgqueue.circuit_breakers", "public.ledger")
    return module_dsn


@pytest.fixture
def app(dsn: str) -> App:
    return App(dsn, settings=Settings(dsn=dsn, lease_seconds=LEASE_SECONDS, poll_seconds=POLL_SECONDS,
                                      shutdown_grace_seconds=5))


StartWorker = Callable[..., Worker]


@pytest.fixture
def start_worker(app: App, db: Conn) -> Iterator[StartWorker]:
    started: list[tuple[Worker, threading.Thread]] = []

    def start(*, concurrency: int = 4, settings: Settings | None = None) -> Worker:
        worker = Worker(app, concurrency=concurrency, settings=settings or app.settings)
        thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False}, daemon=True)
        thread.start()
        started.append((worker, thread))
        wait_until(lambda: db.execute("SELECT 1 FROM pgqueue.workers WHERE id = %s", [worker.worker_id]).fetchone(),
                   timeout=WAIT, message="the worker to register")
        return worker

    yield start
    for worker, _ in started:
        worker.stop()
    for _, thread in started:
        thread.join(timeout=30)


def job_row(db: Conn, job_id: int) -> dict[str, Any]:
    with db.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT id, state, attempt, run_at, last_error, lease_token FROM pgqueue.jobs WHERE id = %s",
                          [job_id]).fetchone()
    assert row is not None
    return row


def wait_for_state(db: Conn, job_id: int, *states: str, timeout: float = WAIT) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        row = job_row(db, job_id)
        return row if row["state"] in states else None

    row = wait_until(reached, timeout=timeout, message=f"job {job_id} to reach {states}")
    assert row is not None
    return row


def events(db: Conn, job_id: int) -> list[tuple[str, str | None]]:
    return [(r[0], r[1]) for r in db.execute(
        "SELECT event, actor FROM pgqueue.job_events WHERE job_id = %s ORDER BY id", [job_id]).fetchall()]


def cancel(dsn: str, job_id: int, actor: str = "alice") -> admin.JobChange:
    with psycopg.connect(dsn) as conn:
        return admin.cancel_job(conn, job_id, actor=actor)


# --- cancelling a running job -------------------------------------------------------------------


def test_a_sync_handler_sees_job_cancelled_and_the_job_ends_cancelled_with_its_actor(
        app: App, db: Conn, dsn: str, start_worker: StartWorker) -> None:
    started = threading.Event()
    seen: list[bool] = []

    @app.task(name="long-sync")
    def long_sync(job: Job) -> str:
        started.set()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if job.cancelled:
                seen.append(True)
                job.raise_if_cancelled()
            time.sleep(0.01)
        return "not cancelled"

    job_id = app.enqueue(None, "long-sync", {})
    start_worker()
    assert started.wait(WAIT)
    change = cancel(dsn, job_id)

    assert change.previous_state == "running"
    wait_until(lambda: seen, timeout=WAIT, message="the handler to see job.cancelled")
    assert job_row(db, job_id)["state"] == "cancelled"
    assert events(db, job_id)[1:] == [("claimed", None), ("cancelled", "alice")]


def test_an_async_handler_coroutine_is_cancelled(app: App, db: Conn, dsn: str, start_worker: StartWorker) -> None:
    started = threading.Event()
    outcome: list[str] = []

    @app.task(name="long-async")
    async def long_async(job: Job) -> str:
        started.set()
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            outcome.append("coroutine cancelled")
            raise
        return "not cancelled"

    job_id = app.enqueue(None, "long-async", {})
    worker = start_worker()
    assert started.wait(WAIT)
    cancel(dsn, job_id)

    wait_until(lambda: outcome, timeout=WAIT, message="the coroutine to be cancelled")
    assert job_row(db, job_id)["state"] == "cancelled"
    # The worker lives on and still runs jobs.
    @app.task(name="after")
    def after(job: Job) -> str:
        return "ok"

    after_id = app.enqueue(None, "after", {})
    wait_for_state(db, after_id, "completed")
    assert worker.worker_id


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_cancelled_transactional_job_leaves_none_of_its_writes(
        app: App, db: Conn, dsn: str, start_worker: StartWorker, kind: str) -> None:
    started = threading.Event()

    if kind == "sync":
        @app.task(name="tx", transactional=True)
        def tx(job: Job) -> None:
            job.connection.execute("INSERT INTO public.ledger VALUES (%s, %s)", [job.id, job.attempt])
            started.set()
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                job.raise_if_cancelled()
                time.sleep(0.01)
    else:
        @app.task(name="tx", transactional=True)
        async def tx(job: Job) -> None:
            await job.connection.execute("INSERT INTO public.ledger VALUES (%s, %s)", [job.id, job.attempt])
            started.set()
            await asyncio.sleep(WAIT)

    job_id = app.enqueue(None, "tx", {})
    start_worker()
    assert started.wait(WAIT)
    cancel(dsn, job_id)

    # The handler's transaction ends (rolled back) once it learns of the cancellation.
    wait_until(lambda: db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgqueue%%' AND state LIKE 'idle in%%'"
    ).fetchone() == (0,), timeout=WAIT, message="the handler's transaction to end")
    assert db.execute("SELECT count(*) FROM public.ledger").fetchone() == (0,)
    assert job_row(db, job_id)["state"] == "cancelled"


def test_without_listen_the_heartbeat_tells_the_handler(
        app: App, db: Conn, dsn: str, start_worker: StartWorker) -> None:
    started = threading.Event()
    seen: list[float] = []

    @app.task(name="poll-only")
    def poll_only(job: Job) -> None:
        started.set()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and not job.cancelled:
            time.sleep(0.01)
        seen.append(time.monotonic())

    job_id = app.enqueue(None, "poll-only", {})
    start_worker(settings=Settings(dsn=dsn, lease_seconds=LEASE_SECONDS, poll_seconds=POLL_SECONDS,
                                   shutdown_grace_seconds=5, poll_only=True))
    assert started.wait(WAIT)
    cancelled_at = time.monotonic()
    cancel(dsn, job_id)

    wait_until(lambda: seen, timeout=WAIT, message="the handler to see job.cancelled")
    assert seen[0] - cancelled_at < WAIT / 2  # bounded by the heartbeat tick, not the handler's own end


def test_cancel_errors_for_a_missing_or_finished_job_change_nothing(
        app: App, db: Conn, dsn: str) -> None:
    with pytest.raises(JobNotFound, match="job 999999 not found"):
        cancel(dsn, 999999)
    job_id = app.enqueue(None, "anything", {})
    cancel(dsn, job_id)
    with pytest.raises(InvalidJobState, match="is cancelled"):
        cancel(dsn, job_id)
    assert [e for e, _ in events(db, job_id)] == ["enqueued", "cancelled"]


# --- snooze -------------------------------------------------------------------------------------


def test_snooze_reschedules_without_using_an_attempt(app: App, db: Conn, start_worker: StartWorker) -> None:
    attempts: list[int] = []

    @app.task(name="snoozy", max_attempts=1)
    def snoozy(job: Job) -> str:
        attempts.append(job.attempt)
        if len(attempts) < 3:
            raise Snooze(delay=0.2)
        return "done"

    job_id = app.enqueue(None, "snoozy", {})
    start_worker()

    row = wait_for_state(db, job_id, "completed")
    # max_attempts=1 and three runs: the snoozes used none, each run was attempt 1.
    assert attempts == [1, 1, 1]
    assert row["attempt"] == 1
    assert [e for e, _ in events(db, job_id)] == [
        "enqueued", "claimed", "snoozed", "available", "claimed", "snoozed", "available", "claimed", "completed"]


def test_snooze_goes_back_to_scheduled_at_now_plus_delay_and_keeps_the_last_error(
        app: App, db: Conn, start_worker: StartWorker) -> None:
    runs: list[int] = []

    @app.task(name="later", max_attempts=5, backoff=Backoff.fixed(0))
    def later(job: Job) -> None:
        runs.append(job.attempt)
        if len(runs) == 1:
            raise RuntimeError("first try fails")
        raise Snooze(delay=3600)

    job_id = app.enqueue(None, "later", {})
    start_worker()
    wait_until(lambda: len(runs) == 2 and job_row(db, job_id)["state"] == "scheduled", timeout=WAIT)
    row = job_row(db, job_id)
    assert row["attempt"] == 1  # the failed attempt counts, the snoozed one does not
    assert row["last_error"]["type"] == "RuntimeError"
    delay = db.execute("SELECT EXTRACT(EPOCH FROM run_at - now()) FROM pgqueue.jobs WHERE id = %s",
                       [job_id]).fetchone()
    assert delay is not None
    assert 3500 < float(delay[0]) <= 3600
    assert db.execute("SELECT detail FROM pgqueue.job_events WHERE job_id = %s AND event = 'snoozed'",
                      [job_id]).fetchone() == ({"delay_s": 3600},)


def test_a_transactional_task_that_snoozes_leaves_none_of_that_runs_writes(
        app: App, db: Conn, start_worker: StartWorker) -> None:
    runs: list[int] = []

    @app.task(name="tx-snooze", transactional=True, max_attempts=1)
    def tx_snooze(job: Job) -> None:
        job.connection.execute("INSERT INTO public.ledger VALUES (%s, %s)", [job.id, len(runs)])
        runs.append(job.attempt)
        if len(runs) == 1:
            raise Snooze(0)

    job_id = app.enqueue(None, "tx-snooze", {})
    start_worker()

    wait_for_state(db, job_id, "completed")
    assert runs == [1, 1]
    assert db.execute("SELECT attempt FROM public.ledger").fetchall() == [(1,)]  # only the second run's write


def test_snooze_refuses_a_negative_delay() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        Snooze(delay=-1)


# --- circuit breakers ---------------------------------------------------------------------------


def breaker(db: Conn, task: str) -> dict[str, Any] | None:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM pgqueue.circuit_breakers WHERE task = %s", [task]).fetchone()


def breaker_events(db: Conn) -> list[tuple[str, str | None, str | None]]:
    return [(r[0], r[1], r[2]) for r in db.execute(
        "SELECT event, from_state, to_state FROM pgqueue.job_events WHERE job_id IS NULL AND event LIKE 'breaker%%'"
        " ORDER BY id").fetchall()]


def test_a_breaker_opens_holds_the_task_runs_one_trial_and_closes(
        app: App, db: Conn, start_worker: StartWorker) -> None:
    failing = threading.Event()
    failing.set()
    runs: list[tuple[int, float]] = []

    @app.task(name="flaky", max_attempts=100, backoff=Backoff.fixed(0),
              circuit_breaker=CircuitBreaker(failures=3, window=60, cooldown=1))
    def flaky(job: Job) -> str:
        runs.append((job.id, time.monotonic()))
        if failing.is_set():
            raise RuntimeError("downstream is down")
        return "ok"

    @app.task(name="healthy")
    def healthy(job: Job) -> str:
        return "ok"

    # Three single-attempt jobs open it; the rest are enqueued once it is open. With jobs to claim
    # (more jobs, or retries) the claim after the third failure could run before that failure's
    # ack committed (a claim may take jobs until the opening commits): one more attempt ran past
    # the breaker's opening and the count below was off by one (CI saw it once).
    openers = [app.enqueue(None, "flaky", {}, max_attempts=1) for _ in range(3)]
    start_worker(concurrency=1)

    wait_until(lambda: (b := breaker(db, "flaky")) and b["state"] == "open", timeout=WAIT,
               message="the breaker to open")
    held_at = len(runs)
    assert held_at == 3
    for job_id in openers:
        wait_for_state(db, job_id, "failed")
    ids = [app.enqueue(None, "flaky", {}) for _ in range(5)]
    # While open, another task on the same queue runs at once.
    other = app.enqueue(None, "healthy", {})
    wait_for_state(db, other, "completed", timeout=5)
    # After the cooldown exactly one trial runs, fails, and re-opens the breaker.
    wait_until(lambda: ("breaker_opened", "half_open", "open") in breaker_events(db), timeout=WAIT,
               message="the trial to fail and re-open the breaker")
    assert len(runs) == held_at + 1
    failing.clear()
    # The next trial succeeds and closes it; every job then completes.
    for job_id in ids:
        wait_for_state(db, job_id, "completed")
    row = breaker(db, "flaky")
    assert row is not None
    assert row["state"] == "closed"
    assert row["failures"] == 0
    assert breaker_events(db) == [
        ("breaker_opened", "closed", "open"),
        ("breaker_half_opened", "open", "half_open"),
        ("breaker_opened", "half_open", "open"),
        ("breaker_half_opened", "open", "half_open"),
        ("breaker_closed", "half_open", "closed"),
    ]
    # Held jobs used no attempts: every attempt recorded was a run.
    attempts = db.execute("SELECT sum(attempt) FROM pgqueue.jobs WHERE task = 'flaky'").fetchone()
    assert attempts == (len(runs),)


TRIAL_RACE_ROUNDS = 150


def test_claimers_racing_for_a_due_breaker_start_exactly_one_trial(db: Conn, dsn: str) -> None:
    """Six sessions claim a due breaker's trial at once, 150 times over: one trial each round.

    Before the claim took only the breakers its own transaction had locked, a claimer whose lock
    skipped the row could still see it turn half-open between its claim's snapshot and lock (the
    row rechecked, its trial job's state not) and start a second trial: 1 to 6 or more rounds in
    150 did, in each of 5 runs.
    Odd rounds start from "open past the cooldown", even ones from "half-open, trial gone".
    """
    db.execute("INSERT INTO pgqueue.jobs (task, queue, args) SELECT 'sms', 'default', '{}'"
               " FROM generate_series(1, 20)")
    db.execute("INSERT INTO pgqueue.circuit_breakers (task, state, failure_threshold, window_seconds,"
               " cooldown_seconds) VALUES ('sms', 'closed', 1, 60, 1)")
    gone = db.execute("SELECT min(id) FROM pgqueue.jobs").fetchone()

    async def claim(conn: psycopg.AsyncConnection[TupleRow], start: asyncio.Event) -> int:
        store = AsyncBreakerStore(conn)
        await start.wait()
        return sum([await store.claim_breaker_trial(["sms"], None, "w") is not None for _ in range(3)])

    async def race() -> list[int]:
        conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(6)]
        trials = []
        try:
            for round_ in range(TRIAL_RACE_ROUNDS):
                db.execute("UPDATE pgqueue.jobs SET state = 'available', worker_id = NULL WHERE state <> 'available'")
                db.execute("UPDATE pgqueue.circuit_breakers SET opened_at = now() - interval '1 hour',"
                           " state = %s, trial_job_id = %s",
                           ["open", None] if round_ % 2 else ["half_open", gone[0] if gone else None])
                start = asyncio.Event()
                claims = [asyncio.create_task(claim(conn, start)) for conn in conns]
                await asyncio.sleep(0.005)  # every claimer waits on the event
                start.set()
                trials.append(sum(await asyncio.gather(*claims)))
        finally:
            for conn in conns:
                await conn.close()
        return trials

    trials = asyncio.run(race())
    assert [(i, n) for i, n in enumerate(trials) if n != 1] == []


def test_failures_outside_the_window_do_not_open_the_breaker(
        app: App, db: Conn, start_worker: StartWorker) -> None:
    @app.task(name="slow-fail", max_attempts=1, circuit_breaker=CircuitBreaker(failures=2, window=0.5, cooldown=60))
    def slow_fail(job: Job) -> None:
        raise RuntimeError("boom")

    start_worker(concurrency=1)
    first = app.enqueue(None, "slow-fail", {})
    wait_for_state(db, first, "failed")
    time.sleep(0.7)  # the first failure leaves the 0.5 s window
    second = app.enqueue(None, "slow-fail", {})
    wait_for_state(db, second, "failed")
    row = breaker(db, "slow-fail")
    assert row is not None
    assert row["state"] == "closed"
    assert row["failures"] == 1


def test_the_worker_writes_the_breaker_settings_declared_in_code(
        app: App, db: Conn, start_worker: StartWorker) -> None:
    @app.task(name="guarded", circuit_breaker=CircuitBreaker(failures=7, window=30, cooldown=12.5))
    def guarded(job: Job) -> None: ...

    start_worker()
    row = wait_until(lambda: breaker(db, "guarded"), timeout=WAIT, message="the breaker row")
    assert row is not None
    assert (row["state"], row["failure_threshold"], row["window_seconds"], row["cooldown_seconds"]) == (
        "closed", 7, 30.0, 12.5)


def test_reset_breaker_closes_it_with_an_audit_row_and_list_breakers_shows_it(
        app: App, db: Conn, dsn: str) -> None:
    db.execute("INSERT INTO pgqueue.circuit_breakers (task, state, opened_at, failure_threshold, window_seconds,"
               " cooldown_seconds, failures) VALUES ('sms', 'open', now(), 5, 60, 30, 5)")
    with psycopg.connect(dsn) as conn:
        [info] = admin.list_breakers(conn)
        assert (info.task, info.state, info.failures) == ("sms", "open", 0)  # no failure timestamps in the window
        assert info.trial_at is not None
        change = admin.reset_breaker(conn, "sms", actor="bob")
        assert change.previous_state == "open"
        with pytest.raises(BreakerNotFound, match="no circuit breaker for task 'nope'"):
            admin.reset_breaker(conn, "nope")
    assert db.execute("SELECT state FROM pgqueue.circuit_breakers").fetchone() == ("closed",)
    assert db.execute("SELECT event, from_state, to_state, actor, detail FROM pgqueue.job_events").fetchall() == [
        ("breaker_reset", "open", "closed", "bob", {"task": "sms", "source": "api"})]


def test_circuit_breaker_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="failures 0"):
        CircuitBreaker(failures=0)
    with pytest.raises(ValueError, match="window 0"):
        CircuitBreaker(window=0)
    with pytest.raises(ValueError, match="cooldown -1"):
        CircuitBreaker(cooldown=-1)


def test_health_warns_about_an_open_breaker_without_failing(db: Conn, dsn: str) -> None:
    db.execute("INSERT INTO pgqueue.circuit_breakers (task, state, opened_at, failure_threshold, window_seconds,"
               " cooldown_seconds, recent_failures) VALUES ('sms', 'open', now(), 2, 60, 30, ARRAY[now(), now()])")

    report = admin.health(dsn)

    check = next(c for c in report.checks if c.name == "circuit_breakers")
    assert report.healthy
    assert check.status == "warn"
    assert "'sms' (open, 2 failures in 1m 0s)" in check.detail
    assert "pgqueue breakers reset" in check.detail


def test_a_breaker_removed_from_the_code_is_removed_from_the_database_and_stops_holding_jobs(
        app: App, db: Conn, start_worker: StartWorker) -> None:
    db.execute("INSERT INTO pgqueue.circuit_breakers (task, state, opened_at, failure_threshold, window_seconds,"
               " cooldown_seconds) VALUES ('formerly-guarded', 'open', now(), 5, 60, 3600),"
               " ('not-ours', 'open', now(), 5, 60, 3600)")

    @app.task(name="formerly-guarded")
    def formerly_guarded(job: Job) -> str:
        return "ok"

    job_id = app.enqueue(None, "formerly-guarded", {})
    start_worker()

    wait_for_state(db, job_id, "completed")
    # Only the breaker of a task this worker runs (without one) goes; another app's stays.
    assert db.execute("SELECT task FROM pgqueue.circuit_breakers").fetchall() == [("not-ours",)]
    assert breaker_events(db) == [("breaker_removed", "open", None)]
