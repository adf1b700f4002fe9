"""Real ``pgqueue scheduler``, ``pgqueue worker`` and ``pgqueue schedules`` processes on a real
database: three schedulers insert each fire time once, a worker completes the jobs, a restart
after all schedulers were killed follows each misfire policy, and bad input is one line on stderr.

The apps are in ``sched_app.py``; processes run with ``cwd=tests/e2e`` and ``PGQUEUE_DSN`` set.
Every wait is a ``wait_until`` on the database or a process.
"""

from __future__ import annotations

import json
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import TupleRow

from pgqueue.schedules import ScheduleSpec, add_schedule
from tests.helpers import wait_until
from tests.plugins.processes import RunCli, SpawnPgqueue

pytestmark = pytest.mark.slow

E2E_DIR = Path(__file__).resolve().parent
STEP = timedelta(seconds=2)  # sched_app.CRON
Db = psycopg.Connection[TupleRow]


def fire_times(db: Db, schedule: str) -> list[datetime]:
    rows = db.execute("SELECT fire_time FROM pgqueue.schedule_runs WHERE schedule_name = %s ORDER BY fire_time",
                      [schedule]).fetchall()
    return [r[0] for r in rows]


def db_now(db: Db) -> datetime:
    row = db.execute("SELECT now()").fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


def gaps(times: list[datetime]) -> list[tuple[datetime, datetime]]:
    """Consecutive pairs further apart than one step: missing fire times (a pair 0 apart is a double)."""
    return [(a, b) for a, b in pairwise(times) if b - a != STEP]


@pytest.mark.timing
def test_three_schedulers_insert_each_fire_time_once_and_a_worker_completes_the_jobs(
        dsn: str, db: Db, spawn_pgqueue: SpawnPgqueue) -> None:
    worker = spawn_pgqueue("worker", "--app", "sched_app:every_two_seconds", "--queue", "cron", "--concurrency", "4",
                           dsn=dsn)
    schedulers = [spawn_pgqueue("scheduler", "--app", "sched_app:every_two_seconds", dsn=dsn) for _ in range(3)]

    # About 20 seconds of three schedulers racing for every fire time.
    wait_until(lambda: all(p.alive() for p in schedulers) and len(fire_times(db, "every-2s")) >= 10,
               timeout=45, message="ten fire times inserted")
    for scheduler in schedulers:
        assert scheduler.stop(15) == 0, scheduler.describe()
    stopped_at = db_now(db)

    times = fire_times(db, "every-2s")
    assert len(times) >= 10
    assert gaps(times) == [], "a fire time is missing or doubled"
    # The edges: the first run is the schedule's first fire time after the sync created it, and
    # runs went on until the schedulers stopped.
    created = db.execute("SELECT created_at FROM pgqueue.schedules WHERE name = 'every-2s'").fetchone()
    assert created is not None
    assert created[0] < times[0] <= created[0] + STEP
    assert stopped_at - times[-1] < STEP * 3
    jobs = db.execute("SELECT count(*), count(DISTINCT run_at) FROM pgqueue.jobs WHERE task = 'record-tick'").fetchone()
    assert jobs == (len(times), len(times))
    assert db.execute("SELECT count(*) FROM pgqueue.job_events WHERE event = 'schedule_added'").fetchone() == (1,)
    # Every scheduler took part in the race (each synced, and none crashed).
    assert all(s.log_events("scheduler.started") and s.log_events("scheduler.stopped") for s in schedulers)

    def all_completed() -> bool:
        row = db.execute("SELECT count(*) FILTER (WHERE state = 'completed'), count(*) FROM pgqueue.jobs").fetchone()
        assert row is not None
        return bool(row[0] == row[1] == len(times))

    wait_until(all_completed, timeout=20, message="the worker completed every scheduled job")
    assert worker.stop(15) == 0, worker.describe()


def test_after_all_schedulers_were_killed_a_restart_follows_each_misfire_policy(
        dsn: str, db: Db, spawn_pgqueue: SpawnPgqueue) -> None:
    args = ("scheduler", "--app", "sched_app:three_policies", "--misfire-grace-seconds", "1")
    first = spawn_pgqueue(*args, dsn=dsn)
    wait_until(lambda: all(len(fire_times(db, f"misfire-{p}")) >= 2 for p in ("once", "skip", "all")),
               timeout=30, message="two runs of each schedule")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    # One scheduler handles all three schedules in the same pass, so they stopped at the same fire time.
    last_before = max(fire_times(db, "misfire-all"))
    assert {max(fire_times(db, f"misfire-{p}")) for p in ("once", "skip", "all")} == {last_before}

    # Nobody runs for about 9 seconds: four or five fire times are missed.
    wait_until(lambda: db_now(db) >= last_before + timedelta(seconds=9), timeout=15, message="a 9 s outage")
    restarted_at = db_now(db)
    second = spawn_pgqueue(*args, dsn=dsn)
    wait_until(lambda: max(fire_times(db, "misfire-skip")) >= restarted_at + STEP * 2, timeout=30,
               message="runs after the restart")
    assert second.stop(15) == 0, second.describe()

    after = {p: {t for t in fire_times(db, f"misfire-{p}") if t > last_before} for p in ("once", "skip", "all")}
    assert gaps(sorted(after["all"] | {last_before})) == [], "misfire=all must insert every missed run"
    missed = sorted(after["all"] - after["skip"])
    assert len(missed) >= 3, missed
    assert missed[0] == last_before + STEP
    assert gaps(missed) == []
    assert after["skip"] <= after["once"] <= after["all"]
    assert after["once"] - after["skip"] == {missed[-1]}, "misfire=once must insert exactly one run for the window"
    misfires = db.execute(
        "SELECT detail ->> 'schedule', detail ->> 'policy', (detail ->> 'missed')::int, (detail ->> 'inserted')::int "
        "FROM pgqueue.job_events WHERE event = 'schedule_misfired' ORDER BY 1").fetchall()
    assert misfires == [("misfire-all", "all", len(missed), len(missed)), ("misfire-once", "once", len(missed), 1),
                        ("misfire-skip", "skip", len(missed), 0)]
    assert [e["policy"] for e in second.log_events("schedule.misfired")] != []


def test_a_worker_with_scheduler_syncs_inserts_and_completes_scheduled_jobs(
        dsn: str, db: Db, spawn_pgqueue: SpawnPgqueue) -> None:
    worker = spawn_pgqueue("worker", "--app", "sched_app:every_two_seconds", "--with-scheduler", "--concurrency", "2",
                           dsn=dsn)

    def completed() -> int:
        row = db.execute("SELECT count(*) FROM pgqueue.jobs WHERE state = 'completed'").fetchone()
        assert row is not None
        return int(row[0])

    wait_until(lambda: completed() >= 2, timeout=30, message="two scheduled jobs completed")
    assert worker.stop(15) == 0, worker.describe()
    assert gaps(fire_times(db, "every-2s")) == []
    assert worker.log_events("schedule.synced")


def side_by_side(run_cli: RunCli, dsn: str, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent CLI commands at once (each pays the interpreter's start-up)."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: run_cli(args, dsn=dsn), commands))


def test_schedules_commands_manage_runtime_schedules_and_report_bad_input_in_one_line(
        dsn: str, db: Db, run_cli: RunCli) -> None:
    # Set up through the Python API: each CLI call costs an interpreter start-up.
    with psycopg.connect(dsn) as conn:
        add_schedule(conn, ScheduleSpec.build(name="held", cron="*/10 * * * * *", task="report"))
    added, paused = side_by_side(
        run_cli, dsn,
        ("schedules", "add", "nightly", "--cron", "30 2 * * *", "--task", "report", "--timezone", "America/New_York",
         "--args", '{"report_id": 1}', "--queue", "reports", "--misfire", "skip"),
        ("schedules", "pause", "held"),
    )
    assert added.returncode == 0, added.stderr
    assert "added schedule 'nightly'" in added.stdout
    assert paused.returncode == 0, paused.stderr

    before = db.execute("SELECT count(*) FROM pgqueue.job_events").fetchone()
    # Exit 2: a bad option value is a usage error; exit 1: the NAME (malformed, taken or missing).
    bad_input = [
        (("add", "bad", "--cron", "61 * * * *", "--task", "t"), 2, "invalid cron expression '61 * * * *'"),
        (("add", "bad", "--cron", "* * * * *", "--task", "t", "--timezone", "Mars/Base"), 2, "unknown time zone"),
        (("add", "bad", "--cron", "* * * * *", "--task", "t", "--queue", "Bad Queue"), 2, "queue name 'Bad Queue'"),
        (("add", "bad", "--cron", "* * * * *", "--task", "t", "--args", "{nope"), 2,
         "--args '{nope' is not valid JSON"),
        (("add", "nightly", "--cron", "* * * * *", "--task", "t"), 1, "already exists; pass --replace"),
        (("remove", "missing"), 1, "no schedule named 'missing'"),
        # Refused before any SQL (issue 14): croniter would have wrapped the reversed range; the
        # undecodable byte in argv reaches Python as a lone surrogate; the escape never reaches
        # the terminal raw.
        (("add", "bad", "--cron", "5-1 * * * *", "--task", "t"), 2, "range 5-1 in the minute field is reversed"),
        (("add", "bad" + chr(0xDCFF), "--cron", "* * * * *", "--task", "t"), 1, "lone surrogates"),
        (("add", "\x1b[31mred", "--cron", "* * * * *", "--task", "t"), 1, "schedule name '\\x1b[31mred'"),
        (("add", "bad", "--cron", "* * * * *", "--task", "t", "--args", '{"a": "\\ud800"}'), 2, "lone surrogate"),
        (("pause", "bad" + chr(0xDCFF)), 1, "lone surrogates"),
    ]
    listed, table, *results = side_by_side(
        run_cli, dsn, ("schedules", "list", "--json"), ("schedules", "list"),
        *[("schedules", *args) for args, _, _ in bad_input])

    for (args, code, message), result in zip(bad_input, results, strict=True):
        assert result.returncode == code, (args, result.stdout, result.stderr)
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("pgqueue: error: ")
        assert message in line
        assert "\x1b" not in result.stderr
    assert db.execute("SELECT count(*) FROM pgqueue.job_events").fetchone() == before  # nothing written

    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert sorted(rows) == ["held", "nightly"]
    nightly = rows["nightly"]
    assert (nightly["source"], nightly["state"], nightly["paused"], nightly["args"], nightly["misfire"]) == (
        "runtime", "active", False, {"report_id": 1}, "skip")
    assert len(nightly["next_fire_times"]) == 3
    for text in nightly["next_fire_times"]:
        local = datetime.fromisoformat(text)
        assert local.utcoffset() in (timedelta(hours=-5), timedelta(hours=-4))  # New York's own offset
        assert (local.minute, local.hour) in ((30, 2), (0, 3))  # 03:00 only on a spring-forward day
    assert (rows["held"]["state"], rows["held"]["paused"], rows["held"]["next_fire_times"]) == ("paused", True, [])
    assert table.returncode == 0, table.stderr
    assert "America/New_York" in table.stdout
    assert "paused" in table.stdout

    for result in side_by_side(run_cli, dsn, ("schedules", "add", "nightly", "--cron", "0 4 * * *", "--task", "report",
                                     "--replace"), ("schedules", "resume", "held")):
        assert result.returncode == 0, result.stderr
    assert db.execute("SELECT name, cron, paused FROM pgqueue.schedules ORDER BY name").fetchall() == [
        ("held", "*/10 * * * * *", False), ("nightly", "0 4 * * *", False)]
    removed = run_cli(["schedules", "remove", "nightly"], dsn=dsn)
    assert removed.returncode == 0, removed.stderr
    assert db.execute("SELECT name FROM pgqueue.schedules").fetchall() == [("held",)]


def test_a_scheduler_refuses_a_code_schedule_named_like_a_runtime_one(dsn: str, db: Db, run_cli: RunCli) -> None:
    assert run_cli(["schedules", "add", "clash", "--cron", "0 * * * *", "--task", "other"], dsn=dsn).returncode == 0

    result = run_cli(["scheduler", "--app", "sched_app:clashing"], dsn=dsn)

    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("pgqueue: error: schedule 'clash' is defined in code"), result.stderr
    row = db.execute("SELECT source, cron, task FROM pgqueue.schedules WHERE name = 'clash'").fetchone()
    assert row == ("runtime", "0 * * * *", "other")
