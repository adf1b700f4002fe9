"""Circuit breakers and cancelling running jobs across real ``pgqueue worker`` processes.

The workers run ``control_app.py`` (``--app control_app:app``): a ``downstream`` task behind a
``CircuitBreaker(failures=5, window=60, cooldown=3)`` whose downstream the test switches between
failing, hanging and working (``test_downstream``), and handlers that wait to be cancelled.
"""

from __future__ import annotations

import signal
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

import pgqueue
from tests.e2e.control_app import CONTROL_DDL
from tests.helpers import wait_until
from tests.plugins.processes import ProcessApp, RunCli, SpawnWorker, wait_for_registration

Db = psycopg.Connection[TupleRow]
APP = "control_app:app"


@pytest.fixture
def process_app() -> ProcessApp:
    from tests.e2e.conftest import E2E_DIR

    return ProcessApp(APP, cwd=E2E_DIR, executions_ddl=CONTROL_DDL, concurrency=4, lease_seconds=2.0,
                      poll_seconds=0.5)


def set_downstream(db: Db, mode: str) -> None:
    db.execute("UPDATE test_downstream SET mode = %s", [mode])


def breaker_state(db: Db) -> str | None:
    row = db.execute("SELECT state FROM pgqueue.circuit_breakers WHERE task = 'downstream'").fetchone()
    return None if row is None else str(row[0])


def breaker_events(db: Db) -> list[tuple[str, str, str, Any, Any]]:
    """(event, from, to, at, detail) of the breaker's transitions, in order."""
    return [(r[0], r[1], r[2], r[3], r[4]) for r in db.execute(
        "SELECT event, from_state, to_state, at, detail FROM pgqueue.job_events "
        "WHERE job_id IS NULL AND detail ->> 'task' = 'downstream' ORDER BY id").fetchall()]


def count(db: Db, query: str, params: Any = None) -> int:
    row = db.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def executions_between(db: Db, start: Any, end: Any) -> int:
    return count(db, "SELECT count(*) FROM test_executions AS e JOIN pgqueue.jobs AS j ON j.id = e.job_id "
                     "WHERE j.task = 'downstream' AND e.started_at >= %s AND e.started_at <= %s", [start, end])


# --- circuit breakers ---------------------------------------------------------------------------


def test_a_breaker_stops_every_worker_runs_exactly_one_trial_and_closes_on_success(
        worker_dsn: str, db: Db, spawn_worker: SpawnWorker) -> None:
    workers = [spawn_worker(worker_dsn) for _ in range(2)]
    for worker in workers:
        wait_for_registration(db, worker)
    app = pgqueue.App(worker_dsn)
    ids = app.enqueue_many(None, [pgqueue.JobSpec("downstream", {}) for _ in range(30)])

    wait_until(lambda: breaker_state(db) == "open", timeout=30, message="the breaker to open")
    # Attempts already running when it opened finish; then nothing of the task runs, on any worker.
    wait_until(lambda: count(db, "SELECT count(*) FROM pgqueue.jobs WHERE task = 'downstream' AND state = 'running'")
               == 0, timeout=10)
    held = count(db, "SELECT count(*) FROM pgqueue.jobs WHERE task = 'downstream' AND state = 'available'")
    assert held > 0
    # A breaker-held task never blocks another task on the same queue and workers.
    other = app.enqueue(None, "other", {})
    wait_until(lambda: count(db, "SELECT count(*) FROM pgqueue.jobs WHERE id = %s AND state = 'completed'",
                             [other]) == 1, timeout=5, message="another task to run while the breaker is open")

    # After the cooldown: one trial, which fails and re-opens the breaker.
    wait_until(lambda: len(breaker_events(db)) >= 3, timeout=30, message="the trial to fail")
    opened, trial, reopened = breaker_events(db)[:3]
    assert [e[:3] for e in (opened, trial, reopened)] == [
        ("breaker_opened", "closed", "open"), ("breaker_half_opened", "open", "half_open"),
        ("breaker_opened", "half_open", "open")]
    assert executions_between(db, trial[3], reopened[3]) == 1
    assert 2.5 < (trial[3] - opened[3]).total_seconds() < 10  # the 3 s cooldown, on the database clock

    set_downstream(db, "ok")
    wait_until(lambda: count(db, "SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) AND state = 'completed'",
                             [ids]) == len(ids), timeout=60, message="every job to complete once the breaker closed")
    events = breaker_events(db)
    assert [e[0] for e in events[3:]] == ["breaker_half_opened", "breaker_closed"]
    assert executions_between(db, events[3][3], events[4][3]) == 1
    assert breaker_state(db) == "closed"
    # Held jobs used no attempts: each job's attempt count is its number of executions.
    assert count(db, """
        SELECT count(*) FROM pgqueue.jobs AS j
        WHERE j.id = ANY(%s) AND j.attempt <> (SELECT count(*) FROM test_executions AS e WHERE e.job_id = j.id)
    """, [ids]) == 0


def test_sigkill_of_the_worker_running_the_trial_does_not_leave_the_breaker_stuck(
        worker_dsn: str, db: Db, spawn_worker: SpawnWorker) -> None:
    workers = [spawn_worker(worker_dsn) for _ in range(2)]
    ids = {wait_for_registration(db, worker): worker for worker in workers}
    pgqueue.App(worker_dsn).enqueue_many(None, [pgqueue.JobSpec("downstream", {}) for _ in range(10)])
    wait_until(lambda: breaker_state(db) == "open", timeout=30, message="the breaker to open")
    # Jobs claimed just before the breaker opened still run; one that read "hang" would hold the
    # survivor's slot for a minute, and with all four taken it could run no trial. Only trials run
    # from here on, so once those are gone the next downstream job to start is a trial.
    wait_until(lambda: count(db, "SELECT count(*) FROM pgqueue.jobs WHERE task = 'downstream' AND state = 'running'")
               == 0, timeout=30, message="the jobs claimed before the breaker opened to end")
    set_downstream(db, "hang")

    def trial_worker() -> str | None:
        row = db.execute("SELECT j.worker_id FROM pgqueue.circuit_breakers AS b JOIN pgqueue.jobs AS j "
                         "ON j.id = b.trial_job_id WHERE b.state = 'half_open' AND j.state = 'running'").fetchone()
        return None if row is None else str(row[0])

    holder = wait_until(trial_worker, timeout=30, message="a trial to start")
    assert holder is not None
    ids[holder].send(signal.SIGKILL)
    ids[holder].wait(timeout=10)
    set_downstream(db, "ok")

    # The dead worker's lease is rescued, another trial runs on the survivor and closes the breaker.
    wait_until(lambda: breaker_state(db) == "closed", timeout=60, message="the breaker to close after all")
    # The survivor ran the trial that closed it. Two orders are both right, and race: it claims a
    # new trial once the dead one's job no longer runs (half-open with the previous trial named),
    # or the rescue counted the dead trial's attempt as a failure first, reopening the breaker, and
    # the survivor's trial comes after the cooldown (half-open from open).
    names = [e[0] for e in breaker_events(db)]
    assert names[-2:] == ["breaker_half_opened", "breaker_closed"]
    last_trial = db.execute(
        "SELECT worker_id, from_state, detail ? 'previous_trial_job_id' FROM pgqueue.job_events "
        "WHERE job_id IS NULL AND event = 'breaker_half_opened' ORDER BY id DESC LIMIT 1").fetchone()
    assert last_trial is not None
    assert last_trial[0] != holder
    assert (last_trial[1], last_trial[2]) in {("half_open", True), ("open", False)}
    wait_until(lambda: count(db, "SELECT count(*) FROM pgqueue.jobs WHERE task = 'downstream' AND state <> 'completed'")
               == 0, timeout=60, message="every job to complete")


# --- cancelling running jobs --------------------------------------------------------------------


@pytest.mark.timing
@pytest.mark.parametrize("poll_only", [False, True], ids=["notify", "poll-only"])
def test_cancel_reaches_sync_async_and_transactional_handlers_within_a_second(
        worker_dsn: str, db: Db, spawn_worker: SpawnWorker, run_cli: RunCli, poll_only: bool) -> None:
    worker = spawn_worker(worker_dsn, env={"PGQUEUE_POLL_ONLY": "1"} if poll_only else None)
    wait_for_registration(db, worker)
    app = pgqueue.App(worker_dsn)
    jobs = {task: app.enqueue(None, task, {}) for task in ("wait-sync", "wait-async", "wait-tx")}
    wait_until(lambda: count(db, "SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) AND state = 'running'",
                             [list(jobs.values())]) == 3, timeout=30)
    wait_until(lambda: count(db, "SELECT count(*) FROM test_executions") == 3, timeout=10)

    for job_id in jobs.values():
        done = run_cli(["jobs", "cancel", str(job_id)], dsn=worker_dsn)
        assert done.returncode == 0, done.stderr
        assert "was running" in done.stdout

    wait_until(lambda: count(db, "SELECT count(*) FROM test_cancels") == 3, timeout=10,
               message="every handler to learn of its cancellation")
    lags: dict[str, float] = dict(db.execute("""
        SELECT c.how, EXTRACT(EPOCH FROM c.seen_at - e.at)::float8 FROM test_cancels AS c
        JOIN pgqueue.job_events AS e ON e.job_id = c.job_id AND e.event = 'cancelled'""").fetchall())
    assert set(lags) == {"sync", "async", "tx"}
    assert max(lags.values()) < 1.0, lags
    assert count(db, "SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) AND state = 'cancelled'",
                 [list(jobs.values())]) == 3
    assert count(db, "SELECT count(*) FROM test_ledger") == 0  # the transactional task's write rolled back
    # The cancelled attempts wrote nothing after the cancel (no ack, no retry): the trail ends there.
    for job_id in jobs.values():
        assert [e for (e,) in db.execute("SELECT event FROM pgqueue.job_events WHERE job_id = %s ORDER BY id",
                                         [job_id]).fetchall()] == ["enqueued", "claimed", "cancelled"]
    # The worker is free again: its slots came back.
    follow_up = app.enqueue(None, "other", {})
    wait_until(lambda: count(db, "SELECT count(*) FROM pgqueue.jobs WHERE id = %s AND state = 'completed'",
                             [follow_up]) == 1, timeout=10)
    assert worker.alive()
    # The worker logged each attempt as cancelled, not as a failure or a lost lease.
    assert len(worker.log_events("job.cancelled")) == 3, worker.describe()
    assert worker.log_events("job.retry_scheduled", "job.failed", "job.lease_lost") == [], worker.describe()


def test_cancel_cli_errors_are_one_line_and_change_nothing(worker_dsn: str, db: Db, run_cli: RunCli) -> None:
    done_id = pgqueue.App(worker_dsn).enqueue(None, "other", {})
    db.execute("UPDATE pgqueue.jobs SET state = 'completed', attempt = 1, finished_at = now() WHERE id = %s", [done_id])
    for args, message in ((["jobs", "cancel", "999999"], "job 999999 not found"),
                          (["jobs", "cancel", str(done_id)], "is completed"),
                          (["jobs", "cancel", "abc"], "abc"),
                          (["breakers", "reset", "nope"], "no circuit breaker for task 'nope'")):
        result = run_cli(args, dsn=worker_dsn)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert count(db, "SELECT count(*) FROM pgqueue.job_events WHERE event IN ('cancelled', 'breaker_reset')") == 0
