"""Retention against a real PostgreSQL: what prune deletes and keeps, batches and their audit rows,
the schedule_runs guard, dry runs, the vacuum rule, and the workers' maintenance leader pruning."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow
from structlog.testing import capture_logs

from pgqueue import App, Job, Worker
from pgqueue._db.databases import with_database
from pgqueue._retention import PruneReport, RetentionPolicy, Vacuumer, count_prunable, prune
from pgqueue.settings import Settings
from tests.helpers import admin_connection, wait_until

Conn = psycopg.Connection[TupleRow]
HOUR = 3600.0
DAY = 86400.0


def add_jobs(db: Conn, state: str, count: int, finished_ago: str | None, queue: str = "default") -> list[int]:
    rows = db.execute("""
        INSERT INTO pgqueue.jobs (task, queue, state, finished_at)
        SELECT 't', %s, %s, now() - %s::interval FROM generate_series(1, %s)
        RETURNING id""", [queue, state, finished_ago, count]).fetchall()
    return [row[0] for row in rows]


def remaining(db: Conn, ids: list[int]) -> set[int]:
    return {row[0] for row in db.execute("SELECT id FROM pgqueue.jobs WHERE id = ANY(%s)", [ids]).fetchall()}


def pruned_events(db: Conn) -> list[tuple[Any, ...]]:
    return db.execute("SELECT job_id, actor, detail FROM pgqueue.job_events WHERE event = 'pruned' ORDER BY id"
                      ).fetchall()


def test_prune_deletes_finished_jobs_past_their_state_s_retention_and_keeps_the_rest(db: Conn) -> None:
    old_completed = add_jobs(db, "completed", 3, "2 hours")
    new_completed = add_jobs(db, "completed", 2, "10 minutes")
    old_failed = add_jobs(db, "failed", 2, "2 days")
    new_failed = add_jobs(db, "failed", 2, "2 hours")  # older than the completed retention, not the failed one
    old_cancelled = add_jobs(db, "cancelled", 1, "2 days")
    # Unfinished jobs are never pruned, whatever finished_at says (a retried job keeps its old one).
    unfinished = [*add_jobs(db, "available", 2, "30 days"), *add_jobs(db, "scheduled", 1, "30 days"),
                  *add_jobs(db, "running", 1, "30 days")]

    report = prune(db, RetentionPolicy(completed=HOUR, failed=DAY, audit=30 * DAY), "test")

    assert (report.completed, report.failed, report.cancelled) == (3, 2, 1)
    assert report.finished
    assert remaining(db, old_completed + old_failed + old_cancelled) == set()
    assert remaining(db, new_completed + new_failed + unfinished) == set(new_completed + new_failed + unfinished)


def test_never_keeps_that_state_forever(db: Conn) -> None:
    completed = add_jobs(db, "completed", 2, "400 days")
    failed = add_jobs(db, "failed", 2, "400 days")

    report = prune(db, RetentionPolicy(completed=None, failed=DAY, audit=None), "test")

    assert (report.completed, report.failed) == (0, 2)
    assert remaining(db, completed) == set(completed)
    assert remaining(db, failed) == set()


def test_each_batch_writes_one_audit_row_with_its_own_counts_not_one_per_job(db: Conn) -> None:
    add_jobs(db, "completed", 12, "2 hours")
    add_jobs(db, "failed", 3, "8 days")
    add_jobs(db, "cancelled", 1, "8 days")
    before = db.execute("SELECT count(*) FROM pgqueue.job_events").fetchone()

    report = prune(db, RetentionPolicy(completed=HOUR, failed=7 * DAY, audit=30 * DAY), "cli:alice", batch_size=5)

    after = db.execute("SELECT count(*) FROM pgqueue.job_events").fetchone()
    assert before is not None
    assert after is not None
    events = pruned_events(db)
    assert after[0] - before[0] == len(events) == report.batches == 4
    # 5 completed, 5 completed, the last 2 completed and 3 failed or cancelled, then the last one.
    assert [sum(e[2][kind] for kind in PruneReport.COUNTS) for e in events] == [5, 5, 5, 1]
    assert [e[2]["batch"] for e in events] == [1, 2, 3, 4]
    assert [e[2]["finished"] for e in events] == [False, False, False, True]
    assert {kind: sum(e[2][kind] for e in events) for kind in PruneReport.COUNTS} == {
        "completed": 12, "failed": 3, "cancelled": 1, "schedule_runs": 0, "audit_events": 0} == report.counts()
    assert {(job_id, actor) for job_id, actor, _ in events} == {(None, "cli:alice")}
    # One run: one id and one set of cutoffs.
    assert len({(e[2]["run"], e[2]["completed_before"], e[2]["failed_before"], e[2]["audit_before"])
                for e in events}) == 1
    detail = events[0][2]
    cutoffs = db.execute("""
        SELECT now() - %s::timestamptz BETWEEN '59 minutes' AND '61 minutes',
               now() - %s::timestamptz BETWEEN '6 days 23 hours' AND '7 days 1 hour'""",
                         [detail["completed_before"], detail["failed_before"]]).fetchone()
    assert cutoffs == (True, True)


def test_batches_are_bounded_and_the_run_goes_on_until_a_short_batch(db: Conn) -> None:
    ids = add_jobs(db, "completed", 10, "2 hours")  # exactly two full batches, then an empty one
    seen: list[tuple[str, int]] = []

    report = prune(db, RetentionPolicy(completed=HOUR, failed=None, audit=None), "test", batch_size=5,
                   progress=lambda step, done: seen.append((step, done)))

    assert report.completed == 10
    assert report.batches == 3
    assert seen == [("completed", 5), ("completed", 10), ("completed", 10)]
    assert remaining(db, ids) == set()
    # The empty last batch still writes the run's last row: it says the run finished.
    assert [(e[2]["completed"], e[2]["finished"]) for e in pruned_events(db)] == [(5, False), (5, False), (0, True)]


def test_a_step_that_runs_out_leaves_the_rest_of_its_batch_to_the_next(db: Conn) -> None:
    add_jobs(db, "completed", 2, "2 hours")
    add_jobs(db, "failed", 2, "8 days")

    report = prune(db, RetentionPolicy(completed=HOUR, failed=7 * DAY, audit=30 * DAY), "maintenance",
                   record_empty=False)

    # One transaction, one row: the steady state of the maintenance leader.
    assert (report.completed, report.failed, report.batches, report.finished) == (2, 2, 1, True)
    assert [(e[2]["completed"], e[2]["failed"], e[2]["finished"]) for e in pruned_events(db)] == [(2, 2, True)]


def test_a_batch_budget_stops_the_run_and_the_next_run_finishes(db: Conn) -> None:
    ids = add_jobs(db, "completed", 12, "2 hours")
    policy = RetentionPolicy(completed=HOUR, failed=None, audit=None)

    first = prune(db, policy, "maintenance", batch_size=5, max_batches=2)

    assert (first.completed, first.finished) == (10, False)
    assert len(remaining(db, ids)) == 2
    second = prune(db, policy, "maintenance", batch_size=5, max_batches=2)
    assert (second.completed, second.finished) == (2, True)
    assert remaining(db, ids) == set()
    events = pruned_events(db)
    assert [(e[2]["completed"], e[2]["finished"]) for e in events] == [(5, False), (5, False), (2, True)]
    assert events[0][2]["run"] == events[1][2]["run"] != events[2][2]["run"]


def test_an_interrupted_run_still_audits_the_batches_it_committed(db: Conn) -> None:
    ids = add_jobs(db, "completed", 12, "2 hours")

    def interrupt(step: str, done: int) -> None:  # called after each committed batch: Ctrl-C after the first
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prune(db, RetentionPolicy(completed=HOUR, failed=None, audit=None), "cli:alice", batch_size=5,
              progress=interrupt)

    assert len(remaining(db, ids)) == 7
    assert [(e[1], e[2]["completed"], e[2]["finished"]) for e in pruned_events(db)] == [("cli:alice", 5, False)]


def test_a_run_interrupted_after_its_last_row_writes_no_second_row(db: Conn) -> None:
    add_jobs(db, "completed", 2, "2 hours")

    def interrupt(step: str, done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prune(db, RetentionPolicy(completed=HOUR, failed=None, audit=None), "cli:alice", batch_size=5,
              progress=interrupt)

    assert [(e[2]["completed"], e[2]["finished"]) for e in pruned_events(db)] == [(2, True)]


def test_a_row_is_only_written_for_an_empty_run_when_asked(db: Conn) -> None:
    policy = RetentionPolicy(completed=HOUR, failed=DAY, audit=30 * DAY)

    prune(db, policy, "maintenance", record_empty=False)
    assert pruned_events(db) == []
    prune(db, policy, "cli:bob")
    assert [(e[1], e[2]["completed"]) for e in pruned_events(db)] == [("cli:bob", 0)]


def test_a_job_locked_by_another_transaction_is_skipped_not_waited_for(dsn: str, db: Conn) -> None:
    locked, free = add_jobs(db, "completed", 2, "2 hours")
    with psycopg.connect(dsn) as other:
        other.execute("SELECT 1 FROM pgqueue.jobs WHERE id = %s FOR UPDATE", [locked])
        db.execute("SET lock_timeout = '2s'")  # a wait would fail the test instead of hanging it
        report = prune(db, RetentionPolicy(completed=HOUR, failed=None, audit=None), "test")
        other.rollback()

    assert report.completed == 1
    assert remaining(db, [locked, free]) == {locked}


def test_dry_run_counts_what_would_go_and_deletes_nothing(db: Conn) -> None:
    ids = [*add_jobs(db, "completed", 4, "2 hours"), *add_jobs(db, "failed", 2, "8 days"),
           *add_jobs(db, "cancelled", 1, "8 days"), *add_jobs(db, "failed", 1, "1 day")]
    policy = RetentionPolicy(completed=HOUR, failed=7 * DAY, audit=30 * DAY)

    report = count_prunable(db, policy)

    assert report.dry_run
    assert (report.completed, report.failed, report.cancelled) == (4, 2, 1)
    assert remaining(db, ids) == set(ids)
    assert pruned_events(db) == []
    real = prune(db, policy, "test")
    assert (real.completed, real.failed, real.cancelled) == (4, 2, 1)


def test_dry_run_does_not_count_a_finished_job_that_a_job_still_to_run_depends_on(db: Conn) -> None:
    completed, failed = add_jobs(db, "completed", 1, "2 hours")[0], add_jobs(db, "failed", 1, "8 days")[0]
    lone = add_jobs(db, "completed", 1, "2 hours")
    db.execute("UPDATE pgqueue.jobs SET has_dependents = true WHERE id = ANY(%s)", [[completed, failed]])
    waiting = add_jobs(db, "waiting", 1, None)[0]
    db.execute("INSERT INTO pgqueue.job_dependencies (job_id, depends_on) VALUES (%s, %s), (%s, %s)",
               [waiting, completed, waiting, failed])
    policy = RetentionPolicy(completed=HOUR, failed=7 * DAY, audit=30 * DAY)

    dry = count_prunable(db, policy)
    real = prune(db, policy, "test")

    assert (real.completed, real.failed, real.cancelled) == (1, 0, 0)
    assert remaining(db, [completed, failed, *lone]) == {completed, failed}
    assert (dry.completed, dry.failed, dry.cancelled) == (real.completed, real.failed, real.cancelled)


# --- schedule_runs: the exactly-once guard of cron ---

def add_schedule(db: Conn, name: str, last_run_ago: str | None, next_run_in: str | None) -> None:
    db.execute("""
        INSERT INTO pgqueue.schedules (name, cron, task, last_run_at, next_run_at)
        VALUES (%s, '0 * * * *', 't', now() - %s::interval, now() + %s::interval)""",
               [name, last_run_ago, next_run_in])


def add_run(db: Conn, schedule: str, fired_ago: str) -> None:
    db.execute("INSERT INTO pgqueue.schedule_runs (schedule_name, fire_time) VALUES (%s, now() - %s::interval)",
               [schedule, fired_ago])


def runs(db: Conn) -> set[tuple[str, int]]:
    rows = db.execute("""
        SELECT schedule_name, round(extract(epoch FROM now() - fire_time) / 86400)::int FROM pgqueue.schedule_runs
        """).fetchall()
    return {(name, days) for name, days in rows}


def test_schedule_runs_go_only_when_old_and_before_the_schedule_s_last_and_next_run(db: Conn) -> None:
    add_schedule(db, "hourly", last_run_ago="1 hour", next_run_in="1 hour")
    add_run(db, "hourly", "40 days")   # old, long before the last run: cannot fire again -> pruned
    add_run(db, "hourly", "10 days")   # within the audit retention -> kept
    # next_run_at moved back by hand before its last run: fire times from there on may be planned again.
    add_schedule(db, "stalled", last_run_ago="40 days", next_run_in="-42 days")
    add_run(db, "stalled", "40 days")  # its last run: not before last_run_at -> kept
    add_run(db, "stalled", "41 days")  # before last_run_at but not before next_run_at -> kept
    add_schedule(db, "fresh", last_run_ago=None, next_run_in="1 hour")
    add_run(db, "fresh", "45 days")    # no last run recorded -> kept
    add_run(db, "removed", "50 days")  # its schedule was removed; re-adding it must not fire this again -> kept
    policy = RetentionPolicy(completed=None, failed=None, audit=30 * DAY)

    assert count_prunable(db, policy).schedule_runs == 1
    report = prune(db, policy, "test")

    assert report.schedule_runs == 1
    assert runs(db) == {("hourly", 10), ("stalled", 40), ("stalled", 41), ("fresh", 45), ("removed", 50)}


def test_schedule_runs_are_kept_forever_when_the_audit_retention_is_never(db: Conn) -> None:
    add_schedule(db, "hourly", last_run_ago="1 hour", next_run_in="1 hour")
    add_run(db, "hourly", "400 days")

    assert prune(db, RetentionPolicy(completed=None, failed=None, audit=None), "test").schedule_runs == 0
    assert runs(db) == {("hourly", 400)}


# --- vacuum ---

def test_the_vacuumer_vacuums_pgqueue_jobs_when_autovacuum_is_off_for_it_and_dead_rows_pile_up(db: Conn) -> None:
    db.execute("ALTER TABLE pgqueue.jobs SET (autovacuum_enabled = false)")
    add_jobs(db, "completed", 3000, "2 hours")
    add_jobs(db, "available", 100, None)
    report = prune(db, RetentionPolicy(completed=HOUR, failed=None, audit=None), "test")
    vacuumer = Vacuumer()
    vacuumer.deleted_since_vacuum = report.completed  # the statistics may not show the deletes yet

    decision = vacuumer.maybe_vacuum(db)

    assert decision.vacuumed, decision
    assert vacuumer.deleted_since_vacuum == 0
    wait_until(lambda: db.execute("SELECT vacuum_count > 0 FROM pg_stat_user_tables "
                                  "WHERE relid = 'pgqueue.jobs'::regclass").fetchone() == (True,), timeout=10)
    # Few dead rows now: nothing to do.
    assert not Vacuumer().maybe_vacuum(db).vacuumed


def test_the_vacuumer_leaves_pgqueue_jobs_to_autovacuum_exactly_when_the_server_runs_it(db: Conn) -> None:
    # CI runs this on both kinds of server: the system one (autovacuum off) and the embedded one
    # (on), so each branch is exercised on every run.
    db.execute("ALTER TABLE pgqueue.jobs SET (autovacuum_enabled = true)")
    row = db.execute("SELECT current_setting('autovacuum')::boolean").fetchone()
    assert row is not None
    vacuumer = Vacuumer()
    vacuumer.deleted_since_vacuum = 10**6

    decision = vacuumer.maybe_vacuum(db)

    if row[0]:
        assert (decision.vacuumed, decision.reason) == (False, "autovacuum")
    else:
        # The table's own autovacuum_enabled cannot turn on what the server has off.
        assert (decision.vacuumed, decision.reason) == (True, "dead rows")


def test_a_role_that_may_not_vacuum_warns_once_and_goes_on(dsn: str, pg_server_dsn: str, db: Conn) -> None:
    db.execute("ALTER TABLE pgqueue.jobs SET (autovacuum_enabled = false)")
    role = f"pgq_retention_{uuid.uuid4().hex[:8]}"
    dbname = db.info.dbname
    with admin_connection(pg_server_dsn) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        db.execute(sql.SQL("GRANT USAGE ON SCHEMA pgqueue TO {0}; GRANT SELECT ON pgqueue.jobs TO {0}").format(
            sql.Identifier(role)))
        with psycopg.connect(with_database(pg_server_dsn, dbname), user=role, autocommit=True) as limited, \
                capture_logs() as logs:
            vacuumer = Vacuumer()
            vacuumer.deleted_since_vacuum = 10**6
            first = vacuumer.maybe_vacuum(limited)
            second = vacuumer.maybe_vacuum(limited)
    finally:
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with admin_connection(pg_server_dsn) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))

    assert (first.vacuumed, first.reason) == (False, "not permitted")
    assert (second.vacuumed, second.reason) == (False, "not permitted")
    assert [e["event"] for e in logs] == ["retention.vacuum_not_permitted"]
    assert logs[0]["log_level"] == "warning"


# --- the workers' maintenance leader ---

def test_the_maintenance_leader_prunes_completed_jobs_past_a_short_retention(dsn: str, db: Conn) -> None:
    settings = Settings(dsn=dsn, poll_seconds=0.2, shutdown_grace_seconds=2, retain_completed=1.0,
                        prune_interval_seconds=0.2)
    app = App(dsn, settings=settings)

    @app.task(name="work")
    async def work(job: Job) -> None:
        return None

    old_failed = add_jobs(db, "failed", 1, "1 hour")  # failed retention is the default 7 days: kept
    worker = Worker(app, concurrency=4, settings=settings)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
    with capture_logs() as logs:
        thread.start()
        try:
            ids = [app.enqueue(None, "work") for _ in range(5)]
            wait_until(lambda: remaining(db, ids) == set(), timeout=20, message="completed jobs pruned")
            wait_until(lambda: sum(e[2]["completed"] for e in pruned_events(db)) == 5, timeout=5)
        finally:
            worker.stop()
            thread.join(timeout=15)

    assert remaining(db, old_failed) == set(old_failed)
    assert {e[1] for e in pruned_events(db)} == {"maintenance"}
    # The jobs' own trails stay; retention only removed the rows of pgqueue.jobs.
    completed = db.execute("SELECT count(*) FROM pgqueue.job_events WHERE event = 'completed' AND job_id = ANY(%s)",
                           [ids]).fetchone()
    assert completed == (5,)
    pruned_logs = [e for e in logs if e["event"] == "retention.pruned"]
    assert pruned_logs
    assert sum(e["completed"] for e in pruned_logs) == 5


def test_a_prune_report_counts_every_kind() -> None:
    report = PruneReport(completed=1, failed=2, cancelled=3, schedule_runs=4)

    assert report.total == 10
    assert report.as_dict()["audit_events"] == 0
