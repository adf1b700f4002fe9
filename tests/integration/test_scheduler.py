"""The scheduler against a real PostgreSQL: sync rules, exactly-once under concurrency, the
database clock, misfire policies, and the run-time Python API.

Time is the database's: tests move a schedule's ``next_run_at`` with SQL relative to ``now()``
(which is what downtime looks like in the database) instead of mocking any clock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow
from structlog.testing import capture_logs

import pgqueue
from pgqueue._db.schedules import ScheduleStore
from pgqueue._scheduler import Scheduler
from pgqueue.errors import InvalidSchedule, ScheduleExists, ScheduleNotFound
from pgqueue.schedules import (
    ScheduleSpec,
    add_schedule,
    get_schedule,
    list_schedules,
    pause_schedule,
    remove_schedule,
    resume_schedule,
)
from tests.helpers import wait_until

Db = psycopg.Connection[TupleRow]
# Long enough that a daily fire time set to today's midnight is on time, not missed.
TWO_DAYS = timedelta(days=2)


@pytest.fixture
def make_scheduler() -> Iterator[Callable[..., Scheduler]]:
    made: list[Scheduler] = []

    def make(app: pgqueue.App, **options: Any) -> Scheduler:
        scheduler = Scheduler(app, **options)
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.stop(timeout=10)
        scheduler.close()


def runs(db: Db, name: str | None = None) -> list[tuple[str, datetime, int | None]]:
    """(schedule, fire time, job id) of every recorded run, in fire-time order."""
    rows = db.execute(
        "SELECT schedule_name, fire_time, job_id FROM pgqueue.schedule_runs "
        "WHERE %(name)s::text IS NULL OR schedule_name = %(name)s ORDER BY fire_time, schedule_name",
        {"name": name}).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def schedule_row(db: Db, name: str) -> dict[str, Any]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute("SELECT * FROM pgqueue.schedules WHERE name = %s", [name]).fetchone()
    assert row is not None, f"no schedule {name!r}"
    return row


def events(db: Db, event_prefix: str = "schedule_") -> list[tuple[str, str | None, dict[str, Any]]]:
    rows = db.execute("SELECT event, actor, detail FROM pgqueue.job_events WHERE event LIKE %s ORDER BY id",
                      [event_prefix + "%"]).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def contiguous(times: list[datetime], step: timedelta) -> bool:
    """No fire time missing between the first and the last, and none doubled."""
    return all(later - earlier == step for earlier, later in pairwise(times))


def lock_waits(db: Db) -> int:
    row = db.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                     "AND wait_event_type = 'Lock'").fetchone()
    assert row is not None
    return int(row[0])


def db_now(db: Db) -> datetime:
    row = db.execute("SELECT now()").fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


def make_due_today(db: Db, name: str) -> datetime:
    """Point a daily schedule's next_run_at at today's midnight UTC, a due fire time."""
    row = db.execute("UPDATE pgqueue.schedules SET next_run_at = date_trunc('day', now() AT TIME ZONE 'UTC') "
                     "AT TIME ZONE 'UTC' WHERE name = %s RETURNING next_run_at", [name]).fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


def add_runtime(dsn: str, name: str, cron: str, task: str = "tick", **options: Any) -> None:
    with psycopg.connect(dsn) as conn:
        add_schedule(conn, ScheduleSpec.build(name=name, cron=cron, task=task, **options), actor="test")


# --- sync ---------------------------------------------------------------------------------------


def test_sync_creates_code_schedules_that_start_at_their_next_fire_time(dsn: str, db: Db, make_scheduler) -> None:
    app = pgqueue.App(dsn)
    app.schedule("nightly", cron="0 3 * * *", task="report", timezone="Europe/London", args={"id": 7},
                 queue="reports", priority="high", misfire="skip", max_catchup=5)
    result = make_scheduler(app).sync()

    assert result.created == ("nightly",)
    row = schedule_row(db, "nightly")
    assert (row["source"], row["cron"], row["timezone"], row["task"], row["args"], row["queue"], row["priority"],
            row["misfire"], row["max_catchup"], row["paused"], row["disabled_at"]) == (
        "code", "0 3 * * *", "Europe/London", "report", {"id": 7}, "reports", 25, "skip", 5, False, None)
    next_run = row["next_run_at"].astimezone(app.schedules["nightly"].cron_schedule().zone)
    assert (next_run.hour, next_run.minute) == (3, 0)
    assert timedelta(0) < row["next_run_at"] - db_now(db) <= timedelta(days=1)
    assert events(db) == [("schedule_added", "scheduler", {
        "schedule": "nightly", "source": "code", "cron": "0 3 * * *", "timezone": "Europe/London",
        "task": "report", "queue": "reports"})]


def test_sync_updates_a_changed_code_schedule_and_restarts_fire_times_only_for_timing_changes(
        dsn: str, db: Db, make_scheduler) -> None:
    app = pgqueue.App(dsn)
    app.schedule("report", cron="0 3 * * *", task="report")
    scheduler = make_scheduler(app)
    scheduler.sync()
    db.execute("UPDATE pgqueue.schedules SET next_run_at = next_run_at + interval '7 days' WHERE name = 'report'")
    marked = schedule_row(db, "report")["next_run_at"]

    app.schedule("report", cron="0 3 * * *", task="report", args={"v": 2}, queue="other")
    assert scheduler.sync().updated == ("report",)
    row = schedule_row(db, "report")
    assert (row["args"], row["queue"], row["next_run_at"]) == ({"v": 2}, "other", marked)  # not a timing change

    app.schedule("report", cron="0 4 * * *", task="report", args={"v": 2}, queue="other")
    assert scheduler.sync().updated == ("report",)
    row = schedule_row(db, "report")
    assert row["cron"] == "0 4 * * *"
    assert row["next_run_at"] != marked
    assert row["next_run_at"] - db_now(db) <= timedelta(days=1)
    assert [e[2]["changed"] for e in events(db) if e[0] == "schedule_updated"] == [["queue", "args"], ["cron"]]

    assert scheduler.sync().unchanged == ("report",)
    assert len(events(db)) == 3  # an unchanged sync writes nothing


def test_a_code_schedule_removed_from_code_is_disabled_and_comes_back_when_restored(
        dsn: str, db: Db, make_scheduler) -> None:
    app = pgqueue.App(dsn)
    app.schedule("keep", cron="0 3 * * *", task="t")
    app.schedule("retired", cron="0 0 * * *", task="t")
    make_scheduler(app).sync()

    del app.schedules["retired"]
    result = make_scheduler(app).sync()
    assert result.disabled == ("retired",)
    row = schedule_row(db, "retired")
    assert row["disabled_at"] is not None
    assert row["next_run_at"] is None
    assert not row["paused"]  # the operator's flag is untouched
    assert get_schedule(db, "retired").state == "disabled"
    # Even when due by its old next_run_at, a disabled schedule inserts nothing.
    make_due_today(db, "retired")
    assert make_scheduler(app, misfire_grace=TWO_DAYS).run_pass().inserted == []
    assert make_scheduler(app).sync().disabled == ()  # already disabled: no second event

    app.schedule("retired", cron="0 0 * * *", task="t")
    result = make_scheduler(app).sync()
    assert result.enabled == ("retired",)
    row = schedule_row(db, "retired")
    assert row["disabled_at"] is None
    assert row["next_run_at"] > db_now(db)
    assert [e[0] for e in events(db)] == [
        "schedule_added", "schedule_added", "schedule_disabled", "schedule_enabled"]


def test_sync_never_changes_or_disables_runtime_schedules(dsn: str, db: Db, make_scheduler) -> None:
    add_runtime(dsn, "adhoc", "*/5 * * * *", queue="ops")
    before = schedule_row(db, "adhoc")
    app = pgqueue.App(dsn)
    app.schedule("code-one", cron="0 3 * * *", task="t")

    result = make_scheduler(app).sync()

    assert result.disabled == ()
    assert schedule_row(db, "adhoc") == before


def test_sync_refuses_a_code_schedule_named_like_a_runtime_one_and_changes_nothing(
        dsn: str, db: Db, make_scheduler) -> None:
    add_runtime(dsn, "report", "*/5 * * * *")
    before = schedule_row(db, "report")
    app = pgqueue.App(dsn)
    app.schedule("report", cron="0 3 * * *", task="other")
    app.schedule("unrelated", cron="0 3 * * *", task="other")

    with pytest.raises(ScheduleExists) as raised:
        make_scheduler(app).sync()

    message = str(raised.value)
    assert "'report' is defined in code" in message
    assert "pgqueue schedules remove report" in message
    assert schedule_row(db, "report") == before
    assert [s.name for s in list_schedules(db)] == ["report"]  # "unrelated" was not created either


def test_sync_keeps_an_operator_pause(dsn: str, db: Db, make_scheduler) -> None:
    app = pgqueue.App(dsn)
    app.schedule("report", cron="0 3 * * *", task="t")
    scheduler = make_scheduler(app)
    scheduler.sync()
    pause_schedule(db, "report", actor="ops")

    app.schedule("report", cron="0 4 * * *", task="t")
    scheduler.sync()

    row = schedule_row(db, "report")
    assert (row["paused"], row["cron"], row["next_run_at"]) == (True, "0 4 * * *", None)


def test_concurrent_syncs_create_each_schedule_once(dsn: str, db: Db, make_scheduler) -> None:
    app = pgqueue.App(dsn)
    for index in range(5):
        app.schedule(f"s{index}", cron="*/5 * * * *", task="t")
    schedulers = [make_scheduler(app) for _ in range(10)]
    barrier = threading.Barrier(len(schedulers))
    errors: list[BaseException] = []

    def sync(scheduler: Scheduler) -> None:
        try:
            barrier.wait()
            scheduler.sync()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=sync, args=(s,)) for s in schedulers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert sorted(s.synced.created for s in schedulers if s.synced and s.synced.created) == [
        ("s0", "s1", "s2", "s3", "s4")]
    assert sorted(e[2]["schedule"] for e in events(db)) == ["s0", "s1", "s2", "s3", "s4"]


# --- passes ---------------------------------------------------------------------------------------


def test_a_pass_inserts_the_due_job_with_its_audit_row_and_advances_the_schedule(
        dsn: str, db: Db, make_scheduler) -> None:
    app = pgqueue.App(dsn)

    @app.task(name="report", max_attempts=3)
    def report(job: pgqueue.Job, report_id: int) -> None: ...

    app.schedule("daily", cron="0 0 * * *", task="report", args={"report_id": 1}, queue="reports", priority=5)
    scheduler = make_scheduler(app, misfire_grace=TWO_DAYS)
    scheduler.sync()
    fire_time = make_due_today(db, "daily")

    result = scheduler.run_pass()

    [(name, job_id, fired)] = result.inserted
    assert (name, fired) == ("daily", fire_time)
    job = db.execute("SELECT task, queue, state, priority, args, max_attempts, run_at FROM pgqueue.jobs "
                     "WHERE id = %s", [job_id]).fetchone()
    assert job == ("report", "reports", "available", 5, {"report_id": 1}, 3, fire_time)
    assert runs(db) == [("daily", fire_time, job_id)]
    audit = db.execute("SELECT event, to_state, actor, detail FROM pgqueue.job_events WHERE job_id = %s",
                       [job_id]).fetchall()
    assert audit == [("enqueued", "available", "scheduler",
                      {"schedule": "daily", "fire_time": fire_time.isoformat(), "catch_up": False})]
    row = schedule_row(db, "daily")
    assert row["last_run_at"] == fire_time
    assert row["next_run_at"] == fire_time + timedelta(days=1)
    assert scheduler.run_pass().inserted == []  # nothing else is due


def test_concurrent_passes_insert_each_fire_time_once(dsn: str, db: Db, make_scheduler) -> None:
    add_runtime(dsn, "every-second", "* * * * * *", misfire="all", max_catchup=1000)
    db.execute("UPDATE pgqueue.schedules SET next_run_at = date_trunc('second', now()) - interval '30 seconds'")
    app = pgqueue.App(dsn)
    schedulers = [make_scheduler(app) for _ in range(10)]
    for scheduler in schedulers:
        scheduler.seconds_until_due()  # connect before the race
    barrier = threading.Barrier(len(schedulers))
    inserted: list[tuple[str, int, datetime]] = []
    lock = threading.Lock()

    def race(scheduler: Scheduler) -> None:
        barrier.wait()
        for _ in range(3):
            result = scheduler.run_pass()
            with lock:
                inserted.extend(result.inserted)

    threads = [threading.Thread(target=race, args=(s,)) for s in schedulers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    fire_times = sorted(fired for _, _, fired in inserted)
    assert len(fire_times) == len(set(fire_times)) >= 31
    assert contiguous(fire_times, timedelta(seconds=1)), fire_times
    recorded = runs(db, "every-second")
    assert [r[1] for r in recorded] == fire_times
    row = db.execute("SELECT count(*), count(DISTINCT run_at) FROM pgqueue.jobs").fetchone()
    assert row == (len(recorded), len(recorded))


def test_racing_inserts_of_the_same_fire_times_admit_each_once(dsn: str, db: Db) -> None:
    # Below the row lock: even passes that both believe a fire time is theirs insert it once,
    # because schedule_runs' primary key decides.
    fire_times = [datetime(2024, 1, 1, 0, 0, s, tzinfo=UTC) for s in range(20)]
    job = pgqueue.App(dsn)._new_job("t", {}, max_attempts=1)
    connections = [psycopg.connect(dsn, autocommit=True) for _ in range(10)]
    barrier = threading.Barrier(len(connections))
    inserted: list[tuple[int, datetime]] = []
    lock = threading.Lock()

    def race(conn: Db) -> None:
        store = ScheduleStore(conn)
        barrier.wait()
        with store.transaction():
            mine = store.insert_scheduled_jobs("race", job, fire_times, [False] * len(fire_times), actor="test")
        with lock:
            inserted.extend(mine)

    try:
        threads = [threading.Thread(target=race, args=(c,)) for c in connections]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        for conn in connections:
            conn.close()

    assert sorted(fired for _, fired in inserted) == fire_times
    assert db.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (20,)
    assert db.execute("SELECT count(*) FROM pgqueue.job_events WHERE event = 'enqueued'").fetchone() == (20,)


def test_ten_schedulers_started_together_insert_each_run_once(dsn: str, db: Db, make_scheduler) -> None:
    app = pgqueue.App(dsn)
    app.schedule("every-second", cron="* * * * * *", task="tick")
    schedulers = [make_scheduler(app) for _ in range(10)]
    barrier = threading.Barrier(len(schedulers))

    def start(scheduler: Scheduler) -> None:
        barrier.wait()
        scheduler.run(scheduler._stop)

    threads = [threading.Thread(target=start, args=(s,), daemon=True) for s in schedulers]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(runs(db)) >= 4, timeout=15, message="four runs inserted")
    for scheduler in schedulers:
        scheduler._stop.set()
    for thread in threads:
        thread.join(10)

    fire_times = [r[1] for r in runs(db)]
    assert contiguous(fire_times, timedelta(seconds=1)), fire_times
    assert db.execute("SELECT count(*), count(DISTINCT run_at) FROM pgqueue.jobs").fetchone() == (
        len(fire_times), len(fire_times))
    assert [e[0] for e in events(db)] == ["schedule_added"]


def test_a_sync_waits_for_a_pass_holding_its_schedule_and_keeps_what_the_pass_wrote(
        dsn: str, db: Db, make_scheduler) -> None:
    app = pgqueue.App(dsn)
    app.schedule("daily", cron="0 0 * * *", task="t")
    make_scheduler(app).sync()
    fire_time = make_due_today(db, "daily")
    app.schedule("daily", cron="0 0 * * *", task="t", args={"v": 2})  # a deploy changes its args
    syncing = make_scheduler(app)
    errors: list[BaseException] = []

    def sync() -> None:
        try:
            syncing.sync()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    with psycopg.connect(dsn, autocommit=True) as conn:
        store = ScheduleStore(conn)
        with store.transaction():
            [due] = store.lock_due_schedules(10)  # a pass holds the schedule's row...
            thread = threading.Thread(target=sync)
            thread.start()
            # ...and the sync, which wants to update it, waits for it.
            wait_until(lambda: lock_waits(db) == 1, timeout=10, message="the sync waits for the row")
            # The pass still writes: a sync must not lock it out (that would be a deadlock).
            store.advance_schedule(due["name"], fire_time + timedelta(days=1), fire_time)
        thread.join(10)

    assert errors == []
    row = schedule_row(db, "daily")
    assert row["args"] == {"v": 2}
    # Not a timing change: the sync kept next_run_at as the pass left it, not as the sync first read it.
    assert (row["next_run_at"], row["last_run_at"]) == (fire_time + timedelta(days=1), fire_time)


# --- the database clock -------------------------------------------------------------------------


@pytest.mark.parametrize("skew", [timedelta(minutes=10), timedelta(minutes=-10)])
def test_the_database_clock_decides_what_is_due_not_a_skewed_host_clock(
        dsn: str, db: Db, make_scheduler, skew: timedelta) -> None:
    app = pgqueue.App(dsn)
    app.schedule("per-minute", cron="* * * * *", task="tick")
    scheduler = make_scheduler(app, host_clock=lambda: datetime.now(UTC) + skew)
    scheduler.sync()
    next_run_at = schedule_row(db, "per-minute")["next_run_at"]

    with capture_logs() as logs:
        # By the database, the next minute has not come: a host clock 10 minutes fast must not
        # insert it (nor the nine after it).
        assert scheduler.run_pass().inserted == []
        assert schedule_row(db, "per-minute")["next_run_at"] == next_run_at
        # Now the current minute is due by the database: a host clock 10 minutes slow must not skip it.
        row = db.execute("UPDATE pgqueue.schedules SET next_run_at = date_trunc('minute', now()) "
                         "RETURNING next_run_at").fetchone()
        assert row is not None
        due = row[0]
        result = scheduler.run_pass()

    assert [fired for _, _, fired in result.inserted] == [due]
    assert schedule_row(db, "per-minute")["next_run_at"] == due + timedelta(minutes=1)
    [warning] = [entry for entry in logs if entry["event"] == "scheduler.clock_skew"]
    assert warning["log_level"] == "warning"
    assert abs(warning["host_minus_database_s"] - skew.total_seconds()) < 30


def test_a_fire_time_whose_job_was_pruned_is_not_inserted_again(dsn: str, db: Db, make_scheduler) -> None:
    app = pgqueue.App(dsn)
    app.schedule("daily", cron="0 0 * * *", task="t")
    scheduler = make_scheduler(app, misfire_grace=TWO_DAYS)
    scheduler.sync()
    fire_time = make_due_today(db, "daily")
    [(_, job_id, _)] = scheduler.run_pass().inserted
    db.execute("DELETE FROM pgqueue.jobs WHERE id = %s", [job_id])  # what retention pruning does
    # A scheduler working from stale state (or a next_run_at moved back by hand) sees it due again.
    make_due_today(db, "daily")

    result = scheduler.run_pass()

    assert result.inserted == []
    assert result.already_inserted == [("daily", fire_time)]
    assert db.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (0,)
    assert runs(db) == [("daily", fire_time, job_id)]
    assert schedule_row(db, "daily")["next_run_at"] == fire_time + timedelta(days=1)


# --- misfire policies ------------------------------------------------------------------------------


def test_misfire_policies_after_the_schedulers_were_down_for_hours(dsn: str, db: Db, make_scheduler) -> None:
    for policy in ("once", "skip", "all"):
        add_runtime(dsn, policy, "0 * * * *", misfire=policy)
    # Down for five hours: the last handled fire time was six hours ago.
    db.execute("UPDATE pgqueue.schedules SET next_run_at = date_trunc('hour', now()) - interval '5 hours'")
    hour = db.execute("SELECT date_trunc('hour', now())").fetchone()[0]  # type: ignore[index]
    missed = [hour - timedelta(hours=h) for h in range(5, -1, -1)]

    result = make_scheduler(pgqueue.App(dsn), misfire_grace=timedelta(0)).run_pass()

    assert sorted(result.misfired) == ["all", "once", "skip"]
    assert [r[1] for r in runs(db, "once")] == [hour]  # a single run for the whole window
    assert runs(db, "skip") == []
    assert [r[1] for r in runs(db, "all")] == missed
    for policy in ("once", "skip", "all"):
        assert schedule_row(db, policy)["next_run_at"] == hour + timedelta(hours=1)
    details = {d["schedule"]: d for event, actor, d in events(db) if event == "schedule_misfired"}
    assert {name: (d["missed"], d["inserted"], d["dropped"]) for name, d in details.items()} == {
        "once": (6, 1, 5), "skip": (6, 0, 6), "all": (6, 6, 0)}
    catch_up = db.execute("SELECT DISTINCT detail ->> 'catch_up' FROM pgqueue.job_events "
                          "WHERE event = 'enqueued'").fetchall()
    assert catch_up == [("true",)]


def test_on_time_runs_max_catchup_leaves_out_are_recorded_as_a_misfire(dsn: str, db: Db, make_scheduler) -> None:
    # Nine seconds without a pass (a reconnect), well within the 60 s grace, for a per-second
    # schedule bounded to 3 runs a pass: 3 are inserted and the others must not vanish silently.
    add_runtime(dsn, "every-second", "* * * * * *", misfire="all", max_catchup=3)
    db.execute("UPDATE pgqueue.schedules SET next_run_at = date_trunc('second', now()) - interval '9 seconds'")

    result = make_scheduler(pgqueue.App(dsn)).run_pass()

    assert len(runs(db, "every-second")) == 3
    assert result.misfired == ["every-second"]
    (detail,) = [d for event, _, d in events(db) if event == "schedule_misfired"]
    assert detail["inserted"] == 0
    assert detail["dropped"] == detail["missed"] >= 7


def test_a_paused_schedule_inserts_nothing_and_resuming_does_not_catch_up(dsn: str, db: Db, make_scheduler) -> None:
    add_runtime(dsn, "daily", "0 0 * * *")
    make_due_today(db, "daily")
    pause_schedule(db, "daily", actor="ops")
    scheduler = make_scheduler(pgqueue.App(dsn), misfire_grace=TWO_DAYS)
    assert scheduler.run_pass().inserted == []

    resumed = resume_schedule(db, "daily", actor="ops")

    assert resumed.next_run_at is not None
    assert resumed.next_run_at > db_now(db)
    assert scheduler.run_pass().inserted == []
    assert runs(db) == []


def test_a_schedule_that_cannot_be_enqueued_does_not_stop_the_others(dsn: str, db: Db, make_scheduler) -> None:
    app = pgqueue.App(dsn, require_registered_tasks=True)

    @app.task(name="known")
    def known(job: pgqueue.Job) -> None: ...

    add_runtime(dsn, "broken", "0 0 * * *", task="not-registered")
    add_runtime(dsn, "fine", "0 0 * * *", task="known")
    make_due_today(db, "broken")
    fire_time = make_due_today(db, "fine")

    with capture_logs() as logs:
        result = make_scheduler(app, misfire_grace=TWO_DAYS).run_pass()

    assert result.failed == ["broken"]
    assert [(name, fired) for name, _, fired in result.inserted] == [("fine", fire_time)]
    assert runs(db, "broken") == []
    assert schedule_row(db, "broken")["next_run_at"] == fire_time  # still due: fixed, it fires
    [error] = [entry for entry in logs if entry["event"] == "schedule.fire_failed"]
    assert (error["schedule"], error["error_type"]) == ("broken", "UnknownTask")


def test_a_stored_expression_the_parser_now_refuses_is_reported_once_and_fires_nothing(
        dsn: str, db: Db, make_scheduler) -> None:
    add_runtime(dsn, "fine", "0 0 * * *")
    add_runtime(dsn, "legacy", "0 0 * * *")
    # A row from before reversed ranges were refused (croniter read 5-1 as 5-59,0-1), or edited by hand.
    db.execute("UPDATE pgqueue.schedules SET cron = '5-1 * * * *' WHERE name = 'legacy'")
    make_due_today(db, "legacy")
    fire_time = make_due_today(db, "fine")
    scheduler = make_scheduler(pgqueue.App(dsn), misfire_grace=TWO_DAYS)

    with capture_logs() as logs:
        first = scheduler.run_pass()
        scheduler.run_pass()

    assert [(name, fired) for name, _, fired in first.inserted] == [("fine", fire_time)]
    assert runs(db, "legacy") == []
    assert schedule_row(db, "legacy")["next_run_at"] is None
    [report] = [entry for entry in logs if entry["event"] == "schedule.invalid"]
    assert (report["schedule"], report["error_type"]) == ("legacy", "InvalidCron")
    assert "range 5-1 in the minute field is reversed" in report["error"]
    legacy = get_schedule(db, "legacy")
    assert legacy.state == "active"
    assert legacy.next_fire_times(db_now(db)) == []  # what `schedules list` shows for it


# --- the run-time API ----------------------------------------------------------------------------


@pytest.mark.parametrize("operation", [get_schedule, remove_schedule, pause_schedule, resume_schedule])
def test_a_name_no_schedule_can_have_is_refused_before_any_sql_is_sent(
        dsn: str, db: Db, operation: Callable[..., Any]) -> None:
    for name in ("bad" + chr(0xD800), "\x1b[2Jclear"):
        with psycopg.connect(dsn) as conn:
            with pytest.raises(InvalidSchedule, match="must be 1-200 characters"):
                operation(conn, name)
            assert conn.info.transaction_status == TransactionStatus.IDLE  # not even a BEGIN
    assert events(db) == []



def test_runtime_schedules_can_be_added_listed_paused_resumed_and_removed_with_an_audit_trail(
        dsn: str, db: Db) -> None:
    spec = ScheduleSpec.build(name="adhoc", cron="*/5 * * * *", task="t", timezone="America/New_York")
    added = add_schedule(db, spec, actor="alice")
    assert (added.source, added.state, added.timezone) == ("runtime", "active", "America/New_York")
    assert added.next_run_at is not None
    assert added.next_run_at > db_now(db)

    assert [s.name for s in list_schedules(db)] == ["adhoc"]
    assert pause_schedule(db, "adhoc", actor="alice").state == "paused"
    assert pause_schedule(db, "adhoc", actor="alice").state == "paused"  # idempotent, no second event
    assert resume_schedule(db, "adhoc", actor="alice").state == "active"
    replaced = add_schedule(db, ScheduleSpec.build(name="adhoc", cron="0 * * * *", task="t"), replace=True,
                            actor="alice")
    assert (replaced.cron, replaced.timezone) == ("0 * * * *", "UTC")
    remove_schedule(db, "adhoc", actor="alice")

    assert list_schedules(db) == []
    assert [(event, actor) for event, actor, _ in events(db)] == [
        ("schedule_added", "alice"), ("schedule_paused", "alice"), ("schedule_resumed", "alice"),
        ("schedule_updated", "alice"), ("schedule_removed", "alice")]
    assert all(detail["schedule"] == "adhoc" for _, _, detail in events(db))


def test_adding_a_taken_name_is_refused_and_writes_nothing(dsn: str, db: Db, make_scheduler) -> None:
    add_runtime(dsn, "adhoc", "*/5 * * * *")
    app = pgqueue.App(dsn)
    app.schedule("from-code", cron="0 3 * * *", task="t")
    make_scheduler(app).sync()
    before = events(db)

    with pytest.raises(ScheduleExists, match="--replace"):
        add_schedule(db, ScheduleSpec.build(name="adhoc", cron="0 1 * * *", task="t"))
    with pytest.raises(ScheduleExists, match="defined in code"):
        add_schedule(db, ScheduleSpec.build(name="from-code", cron="0 1 * * *", task="t"), replace=True)
    with pytest.raises(ScheduleNotFound, match="'missing'"):
        pause_schedule(db, "missing")
    with pytest.raises(ScheduleNotFound):
        remove_schedule(db, "missing")

    assert events(db) == before
    assert schedule_row(db, "adhoc")["cron"] == "*/5 * * * *"


def test_adding_the_name_of_a_disabled_code_schedule_says_to_remove_it(dsn: str, db: Db, make_scheduler) -> None:
    # It is no longer in the code: "change it there, or pause it" was no way out.
    app = pgqueue.App(dsn)
    app.schedule("retired", cron="0 3 * * *", task="t")
    make_scheduler(app).sync()
    del app.schedules["retired"]
    make_scheduler(app).sync()

    with pytest.raises(ScheduleExists, match=r"no longer in the code.*pgqueue schedules remove retired"):
        add_schedule(db, ScheduleSpec.build(name="retired", cron="0 1 * * *", task="t"), replace=True)
    remove_schedule(db, "retired")
    assert add_schedule(db, ScheduleSpec.build(name="retired", cron="0 1 * * *", task="t")).source == "runtime"


def test_adding_a_schedule_joins_the_callers_transaction(dsn: str, db: Db) -> None:
    spec = ScheduleSpec.build(name="adhoc", cron="*/5 * * * *", task="t")
    with psycopg.connect(dsn) as conn:
        add_schedule(conn, spec)
        conn.rollback()
    assert list_schedules(db) == []
    assert events(db) == []

    with psycopg.connect(dsn) as conn:  # the block commits
        add_schedule(conn, spec)
    assert [s.name for s in list_schedules(db)] == ["adhoc"]


def test_adding_a_schedule_works_on_a_sqlalchemy_session(dsn: str, db: Db) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with Session(engine) as session:
            add_schedule(session, ScheduleSpec.build(name="from-orm", cron="0 * * * *", task="t"))
            session.commit()
    finally:
        engine.dispose()
    assert get_schedule(db, "from-orm").source == "runtime"
