"""Process faults (issue 5, item 4): handlers that end their own attempt with ``os._exit(1)``,
``SystemExit``, ``KeyboardInterrupt`` or ``asyncio.CancelledError``.

- Raised exceptions are outcomes: the job is retried per its backoff and the same worker process
  goes on working (sync handlers, async handlers, and async handlers under a timeout, which run
  in an asyncio task of their own).
- ``os._exit`` kills the process: under ``--processes 2`` the supervisor replaces the child, the
  job's lease expires and the rescuer retries it; a poison job that kills every child that takes
  it ends ``failed`` after ``max_attempts`` (each claim counts an attempt), while other jobs complete.

And item 15, another process's fault: a transaction left open elsewhere in the database (it pins
vacuum) makes ``pgqueue health`` warn, naming its pid and age, while jobs go on completing.
"""

from __future__ import annotations

import json
import time

import psycopg
import pytest
from psycopg.rows import TupleRow

import pgqueue
from tests.faults.conftest import executions
from tests.faults.proc_app import CRASHES
from tests.helpers import wait_until
from tests.plugins.processes import RunCli, SpawnWorker, WorkerProcess, wait_for_registration

pytestmark = pytest.mark.slow

PROC_APP = "tests.faults.proc_app:app"
Db = psycopg.Connection[TupleRow]


def states(db: Db, job_ids: list[int]) -> dict[int, tuple[str, int]]:
    rows = db.execute("SELECT id, state, attempt FROM pgqueue.jobs WHERE id = ANY(%s)", [job_ids]).fetchall()
    return {int(r[0]): (str(r[1]), int(r[2])) for r in rows}


def events(db: Db, job_id: int) -> list[str]:
    rows = db.execute("SELECT event FROM pgqueue.job_events WHERE job_id = %s ORDER BY id", [job_id]).fetchall()
    return [str(r[0]) for r in rows]


def all_in(db: Db, job_ids: list[int], *wanted: str) -> bool:
    return all(state in wanted for state, _ in states(db, job_ids).values())


@pytest.fixture
def supervisor(fault_dsn: str, spawn_worker: SpawnWorker) -> WorkerProcess:
    """``pgqueue worker --processes 2 --concurrency 2`` (lease 2 s, poll 0.5 s); children log to its stderr."""
    return spawn_worker(fault_dsn, processes=2, concurrency=2, lease_seconds=2.0, poll_seconds=0.5,
                        grace_seconds=5, app_path=PROC_APP)


@pytest.mark.timeout(120)
def test_handler_raising_systemexit_keyboardinterrupt_or_cancellederror_is_retried_and_worker_survives(
        fault_dsn: str, db: Db, spawn_worker: SpawnWorker) -> None:
    worker = spawn_worker(fault_dsn, concurrency=4, lease_seconds=2.0, poll_seconds=0.5, app_path=PROC_APP)
    wait_for_registration(db, worker)
    app = pgqueue.App(fault_dsn)
    crashing = {(task, how): app.enqueue(None, task, {"how": how})
                for task in ("crash-sync", "crash-async", "crash-async-timeout") for how in CRASHES}
    ordinary = app.enqueue_many(None, [pgqueue.JobSpec("work", {"n": n}) for n in range(10)])
    every = [*crashing.values(), *ordinary]

    def settled() -> bool:
        assert worker.alive(), worker.describe()
        return all_in(db, every, "completed", "failed")

    wait_until(settled, timeout=90, message="every job completed or failed")
    final = states(db, every)
    # Retried per policy (fixed 0.2 s backoff, 5 attempts): attempt 1 crashed, attempt 2 completed.
    assert {key: final[job_id] for key, job_id in crashing.items()} == {key: ("completed", 2) for key in crashing}, (
        worker.describe())
    for job_id in crashing.values():
        assert events(db, job_id).count("retry_scheduled") == 1, events(db, job_id)
        assert events(db, job_id).count("completed") == 1, events(db, job_id)
    assert all(final[job_id] == ("completed", 1) for job_id in ordinary)
    # One process did all of it: nothing crashed it, nothing restarted it.
    assert worker.alive(), worker.describe()
    pids = {int(r[0]) for r in db.execute("SELECT DISTINCT pid FROM fault_executions").fetchall()}
    assert pids == {worker.pid}
    # And it still works afterwards.
    late = app.enqueue(None, "work", {"n": "late"})
    wait_until(lambda: states(db, [late])[late] == ("completed", 1), timeout=30, message="a job after the crashes")


@pytest.mark.timeout(150)
def test_os_exit_in_a_handler_is_survived_by_the_supervisor_and_a_poison_job_ends_failed(
        fault_dsn: str, db: Db, supervisor: WorkerProcess) -> None:
    wait_until(lambda: len(db.execute("SELECT id FROM pgqueue.workers").fetchall()) == 2, timeout=60,
               message="two children registered")
    app = pgqueue.App(fault_dsn)

    def settled(job_ids: list[int]) -> bool:
        assert supervisor.alive(), supervisor.describe()
        return all_in(db, job_ids, "completed", "failed")

    # Alone at first, so that no other job shares the child it kills: killed once, rescued, and
    # completed on its second attempt.
    exit_once = app.enqueue(None, "crash-sync", {"how": "os_exit", "until_attempt": 1})
    wait_until(lambda: settled([exit_once]), timeout=60, message="exit_once settled")
    assert states(db, [exit_once])[exit_once] == ("completed", 2), supervisor.describe()
    assert events(db, exit_once).count("rescued") == 1

    started = time.monotonic()
    poison = app.enqueue(None, "crash-sync", {"how": "os_exit", "until_attempt": 99}, max_attempts=3)
    ordinary = app.enqueue_many(None, [pgqueue.JobSpec("work", {"n": n, "seconds": 0.2}) for n in range(20)])
    wait_until(lambda: settled([poison, *ordinary]), timeout=120, message="poison failed, everything else completed")
    elapsed = time.monotonic() - started
    final = states(db, [poison, *ordinary])
    # Each claim counted an attempt; the third death exhausted max_attempts=3: failed, not retried forever.
    assert final[poison] == ("failed", 3), supervisor.describe()
    assert executions(db)[poison] == 3
    assert events(db, poison).count("rescued") == 3, events(db, poison)
    # The other jobs all completed (some may have re-run: they shared a killed child), once each.
    assert all(state == "completed" for state, _ in (final[j] for j in ordinary)), final
    for job_id in ordinary:
        assert events(db, job_id).count("completed") == 1
    # The supervisor lived through four child deaths (one for exit_once, three for the poison job)
    # and replaced every one of them.
    assert supervisor.alive(), supervisor.describe()
    died = supervisor.log_events("supervisor.child_died")
    assert len(died) == 4, supervisor.describe()
    assert all(entry["exit_code"] == 1 for entry in died)
    wait_until(lambda: len(db.execute("SELECT id FROM pgqueue.workers WHERE lease_expires_at > now()")
                           .fetchall()) == 2, timeout=60, message="two live children again")
    print(f"\npoison job failed after 3 deaths in {elapsed:.1f}s")  # noqa: T201 - the measured figure, with -s
    late = app.enqueue(None, "work", {"n": "late"})
    wait_until(lambda: states(db, [late])[late] == ("completed", 1), timeout=30, message="a job after the deaths")


# --- item 15: a transaction left open by another process ---------------------------------------


@pytest.mark.timeout(120)
def test_health_warns_about_a_long_open_transaction_and_jobs_still_complete_while_it_is_open(
        fault_dsn: str, db: Db, spawn_worker: SpawnWorker, run_cli: RunCli) -> None:
    worker = spawn_worker(fault_dsn, concurrency=4, lease_seconds=2.0, poll_seconds=0.5)
    wait_for_registration(db, worker)
    with psycopg.connect(fault_dsn, application_name="forgotten-report") as pinning:
        # BEGIN ... txid_current(): an open transaction with an xid, holding back vacuum's horizon.
        pinning.execute("SELECT txid_current()")
        pin_pid = pinning.info.backend_pid

        def xact_age() -> float:
            row = db.execute("SELECT extract(epoch FROM clock_timestamp() - xact_start)::float8 "
                             "FROM pg_stat_activity WHERE pid = %s", [pin_pid]).fetchone()
            assert row is not None
            assert row[0] is not None
            return float(row[0])

        wait_until(lambda: xact_age() > 3, timeout=30, message="the transaction is over 3 s old")
        warned = run_cli(["health", "--dsn", fault_dsn, "--max-xact-age", "2"])
        # A warning, not a failure: the queue still works (see below), so probes must not restart it.
        assert warned.returncode == 0, warned.stdout + warned.stderr
        lines = warned.stdout.splitlines()
        warn = [line for line in lines if line.startswith("WARN  long_transactions: ")]
        assert len(warn) == 1, warned.stdout
        assert f"pid {pin_pid} open for " in warn[0]
        assert "'forgotten-report'" in warn[0]
        age = int(warn[0].split(f"pid {pin_pid} open for ", 1)[1].split("s", 1)[0])
        assert 3 <= age <= xact_age() + 1, warn[0]
        assert lines[-1] == "healthy"
        report = json.loads(run_cli(["health", "--dsn", fault_dsn, "--max-xact-age", "2", "--json"]).stdout)
        assert report["healthy"] is True
        assert ("long_transactions", "warn") in [(c["name"], c["status"]) for c in report["checks"]]
        # Under the default threshold (300 s) the same transaction is not worth a word.
        quiet = run_cli(["health", "--dsn", fault_dsn])
        assert quiet.returncode == 0, quiet.stdout
        assert "ok    long_transactions: no transaction open longer than 5m 0s" in quiet.stdout.splitlines()

        # Throughput degrades gracefully: jobs still complete while the transaction stays open.
        started = time.monotonic()
        job_ids = pgqueue.App(fault_dsn).enqueue_many(None, [pgqueue.JobSpec("record", {"n": n}) for n in range(300)])

        def done() -> bool:
            assert worker.alive(), worker.describe()
            return all_in(db, job_ids, "completed")

        wait_until(done, timeout=60, message="300 jobs completed under the open transaction")
        elapsed = time.monotonic() - started
        assert pinning.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert xact_age() > 3
        print(f"300 jobs completed in {elapsed:.1f}s with a transaction open")  # noqa: T201 - measured, with -s
    # Once it ends, health is quiet again.
    after = run_cli(["health", "--dsn", fault_dsn, "--max-xact-age", "2"])
    assert after.returncode == 0
    assert not [line for line in after.stdout.splitlines() if line.startswith("WARN")], after.stdout
