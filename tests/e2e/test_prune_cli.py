"""`pgqueue prune` end to end: the installed executable against a real database."""

from __future__ import annotations

import json
import signal
import subprocess

import psycopg
import pytest
from psycopg.rows import TupleRow

from pgqueue import _audit
from tests.e2e.test_cli import ACTOR, PGQUEUE, _env, ok, ok_json, run
from tests.helpers import wait_until
from tests.plugins.processes import RunCli, SpawnPgqueue, SpawnWorker

Conn = psycopg.Connection[TupleRow]


def add_jobs(conn: Conn, state: str, count: int, finished_ago: str) -> None:
    conn.execute("""
        INSERT INTO pgqueue.jobs (task, state, finished_at)
        SELECT 't', %s, now() - %s::interval FROM generate_series(1, %s)""", [state, finished_ago, count])
    conn.commit()


def counts(conn: Conn) -> dict[str, int]:
    rows = conn.execute("SELECT state, count(*) FROM pgqueue.jobs GROUP BY state").fetchall()
    conn.commit()
    return {state: int(n) for state, n in rows}


def test_prune_dry_run_counts_then_prune_deletes_and_records_one_audit_row(dsn: str, conn: Conn) -> None:
    add_jobs(conn, "completed", 7, "2 days")
    add_jobs(conn, "completed", 2, "1 hour")
    add_jobs(conn, "failed", 3, "8 days")
    add_jobs(conn, "cancelled", 1, "8 days")
    add_jobs(conn, "failed", 4, "2 days")
    add_jobs(conn, "available", 2, "30 days")

    dry = ok_json(dsn, "prune", "--dry-run")
    assert (dry["completed"], dry["failed"], dry["cancelled"], dry["dry_run"]) == (7, 3, 1, True)
    assert counts(conn) == {"completed": 9, "failed": 7, "cancelled": 1, "available": 2}

    table = ok(dsn, "prune", "--dry-run", "--completed-older-than", "30m")
    assert "would delete 13 rows (dry run: nothing was deleted)" in table
    assert "completed jobs      9" in table

    report = ok_json(dsn, "prune", "--completed-older-than", "1d", "--failed-older-than", "never")
    assert (report["completed"], report["failed"], report["cancelled"], report["dry_run"]) == (7, 0, 0, False)
    assert report["failed_before"] is None
    assert counts(conn) == {"completed": 2, "failed": 7, "cancelled": 1, "available": 2}

    table = ok(dsn, "prune")  # the defaults: failed and cancelled after 7 days
    assert "deleted 4 rows" in table
    assert counts(conn) == {"completed": 2, "failed": 4, "available": 2}

    events = conn.execute("SELECT job_id, actor, detail ->> 'completed', detail ->> 'failed', detail ->> 'source' "
                          "FROM pgqueue.job_events WHERE event = 'pruned' ORDER BY id").fetchall()
    assert events == [(None, ACTOR, "7", "0", "cli"), (None, ACTOR, "0", "3", "cli")]


def assert_usage_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [expected]


def test_the_environment_sets_the_defaults_and_a_bad_value_is_named(dsn: str, conn: Conn) -> None:
    add_jobs(conn, "completed", 2, "2 hours")
    assert ok_json(dsn, "prune")["completed"] == 0  # the default, 1 day, keeps them
    env = {**_env(dsn), "PGQUEUE_RETAIN_COMPLETED": "1h"}

    done = subprocess.run([PGQUEUE, "prune", "--json"], env=env, capture_output=True, text=True, timeout=60,
                          check=False)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["completed"] == 2
    env["PGQUEUE_RETAIN_FAILED"] = "a week"
    bad = subprocess.run([PGQUEUE, "prune"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert_usage_error(bad, "pgqueue: error: PGQUEUE_RETAIN_FAILED 'a week' must be a duration such as 90, "
                            "90s, 15m, 12h, 1d, 2w, or 'never'")


@pytest.mark.parametrize(("duration", "message"), [
    ("3 days", "must be a duration such as 90, 90s, 15m, 12h, 1d, 2w, or 'never'"),
    # It used to reach PostgreSQL, whose timestamps overflow: "unexpected DatetimeFieldOverflow (a bug in pgqueue)".
    ("99999999w", "is longer than 100 years: use 'never' to keep them forever"),
])
def test_a_bad_duration_is_one_line_and_exit_2_and_deletes_nothing(dsn: str, conn: Conn, duration: str,
                                                                  message: str) -> None:
    add_jobs(conn, "completed", 1, "400 days")

    result = run(dsn, "prune", "--completed-older-than", duration)

    assert_usage_error(result, f"pgqueue: error: --completed-older-than {duration!r} {message}")
    assert counts(conn) == {"completed": 1}


def test_a_batch_size_out_of_range_is_a_usage_error_and_deletes_nothing(dsn: str, conn: Conn) -> None:
    add_jobs(conn, "completed", 1, "400 days")

    for bad in ("0", "100001"):
        assert_usage_error(run(dsn, "prune", "--batch", bad), f"pgqueue: error: --batch {bad} must be between 1 "
                                                              "and 100000")
    assert counts(conn) == {"completed": 1}


def test_prune_from_cron_writes_nothing_to_stderr(dsn: str, conn: Conn) -> None:
    add_jobs(conn, "completed", 1, "2 days")

    result = run(dsn, "prune")  # stderr is a pipe, as under cron (which mails any output)

    assert result.returncode == 0, result.stderr
    assert "deleted 1 rows" in result.stdout
    assert result.stderr == ""  # the progress bar, off a terminal, used to leave an empty line


# --- a prune killed mid-run ---

def add_sealed_old_trail(db: Conn, seals: int, events_per_seal: int) -> None:
    """``seals`` seals of ``events_per_seal`` audit rows each, all 40 days old (past the default audit
    retention): one transaction per seal's rows, sealed a transaction at a time."""
    for _ in range(seals):
        db.execute("""
            INSERT INTO pgqueue.job_events (job_id, event, at, actor)
            SELECT NULL, 'queue_paused', now() - interval '40 days', 'test' FROM generate_series(1, %s)""",
                   [events_per_seal])

    def all_sealed() -> bool:  # another session's open transaction anywhere holds sealing back
        _audit.seal_pending(db, max_events=events_per_seal)
        return _audit.verify(db).pending_events == 0

    wait_until(all_sealed, timeout=60, message="the old trail sealed")


def accounting(db: Conn) -> dict[str, int]:
    """Jobs and audit rows gone, and what the ``pruned`` rows say was deleted, in one snapshot."""
    row = db.execute("""
        SELECT (SELECT count(*) FROM pgqueue.jobs),
               (SELECT COALESCE(sum(events), 0) FROM pgqueue.audit_seals WHERE pruned_at IS NOT NULL),
               (SELECT COALESCE(sum((detail ->> 'completed')::int + (detail ->> 'failed')::int
                                    + (detail ->> 'cancelled')::int), 0)
                FROM pgqueue.job_events WHERE event = 'pruned'),
               (SELECT COALESCE(sum((detail ->> 'audit_events')::int), 0)
                FROM pgqueue.job_events WHERE event = 'pruned')""").fetchone()
    assert row is not None
    return dict(zip(("jobs_left", "events_deleted", "jobs_recorded", "events_recorded"), map(int, row), strict=True))


def assert_trail_accounts_for_everything(run_cli: RunCli, dsn: str, db: Conn, jobs: int) -> dict[str, int]:
    now = accounting(db)
    assert now["jobs_recorded"] == jobs - now["jobs_left"], now
    assert now["events_recorded"] == now["events_deleted"], now
    verify = run_cli(["audit", "verify", "--json"], dsn=dsn)
    assert verify.returncode == 0, (verify.stdout, verify.stderr)
    assert json.loads(verify.stdout)["ok"]
    return now


def wait_for_its_sessions_to_end(db: Conn) -> None:
    """The killed process's sessions are gone too, so nothing it sent can still commit behind the checks."""
    wait_until(lambda: db.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                  "AND pid <> pg_backend_pid()").fetchone() == (0,), timeout=30)


@pytest.mark.parametrize(("kill_during", "completed", "seals"), [
    pytest.param("jobs", 6_000, 20, id="killed-deleting-jobs"),
    pytest.param("audit rows", 10, 600, id="killed-deleting-audit-rows"),
])
def test_a_prune_killed_mid_run_has_audited_every_batch_it_committed(
        spawn_pgqueue: SpawnPgqueue, run_cli: RunCli, dsn: str, db: Conn, kill_during: str, completed: int,
        seals: int) -> None:
    # Jobs past the default retentions, then 2-row seals past the audit retention; --batch 5 makes
    # hundreds of batches (an audit batch is whole seals: 3 of them).
    db.execute("""INSERT INTO pgqueue.jobs (task, state, finished_at)
                  SELECT 't', 'completed', now() - interval '2 days' FROM generate_series(1, %s)""", [completed])
    db.execute("""INSERT INTO pgqueue.jobs (task, state, finished_at)
                  SELECT 't', 'failed', now() - interval '8 days' FROM generate_series(1, 7)""")
    jobs = completed + 7
    add_sealed_old_trail(db, seals, events_per_seal=2)

    prune = spawn_pgqueue("prune", "--batch", "5", dsn=dsn)
    if kill_during == "jobs":
        wait_until(lambda: accounting(db)["jobs_left"] < jobs, timeout=60, interval=0.01,
                   message="the first batches deleted")
    else:
        wait_until(lambda: accounting(db)["events_deleted"] > 0, timeout=60, interval=0.01,
                   message="the first seals pruned")
    prune.send(signal.SIGKILL)
    prune.wait(timeout=10)
    wait_for_its_sessions_to_end(db)

    killed = assert_trail_accounts_for_everything(run_cli, dsn, db, jobs)
    assert killed["jobs_left"] > 0 or killed["events_deleted"] < 2 * seals, ("the run ended before the kill", killed)

    done = run_cli(["prune", "--batch", "5", "--json"], dsn=dsn)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["completed"] + summary["failed"], summary["finished"]) == (killed["jobs_left"], True)
    finished = assert_trail_accounts_for_everything(run_cli, dsn, db, jobs)
    assert (finished["jobs_left"], finished["events_deleted"]) == (0, 2 * seals)


def test_a_worker_killed_while_its_leader_prunes_has_audited_every_batch(
        spawn_worker: SpawnWorker, run_cli: RunCli, worker_dsn: str, db: Conn) -> None:
    # The maintenance leader prunes 4 batches of 5,000 per tick: 60,000 old jobs take 3 ticks.
    jobs = 60_000
    db.execute("""INSERT INTO pgqueue.jobs (task, state, finished_at)
                  SELECT 't', 'completed', now() - interval '2 days' FROM generate_series(1, %s)""", [jobs])

    worker = spawn_worker(worker_dsn)
    wait_until(lambda: accounting(db)["jobs_left"] < jobs, timeout=60, interval=0.01,
               message="the leader's first batch deleted")
    worker.send(signal.SIGKILL)
    worker.wait(timeout=10)
    wait_for_its_sessions_to_end(db)

    killed = assert_trail_accounts_for_everything(run_cli, worker_dsn, db, jobs)
    assert killed["jobs_left"] > 0, ("the leader pruned everything before the kill", killed)
    assert {actor for (actor,) in db.execute("SELECT DISTINCT actor FROM pgqueue.job_events "
                                             "WHERE event = 'pruned'").fetchall()} == {"maintenance"}
    done = run_cli(["prune", "--json"], dsn=worker_dsn)
    assert done.returncode == 0, done.stderr
    assert assert_trail_accounts_for_everything(run_cli, worker_dsn, db, jobs)["jobs_left"] == 0
