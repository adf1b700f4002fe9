"""Flow limits under real ``pgqueue worker`` processes: a queue's global concurrency and rate, a
task's, groups, per-worker slots, and a limited queue never blocking another one.

The test app is ``limits_app.py``; handlers record their runs in ``test_spans`` by the database
clock. Sampling threads read ``pgqueue.jobs`` every 20 ms on their own connection.
"""

from __future__ import annotations

import itertools
import json
import signal
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import psycopg
import pytest
from psycopg.rows import TupleRow

import pgqueue
from pgqueue import admin
from tests.e2e.limits_app import SPANS_DDL
from tests.helpers import wait_until
from tests.plugins.processes import RunCli, SpawnWorker

Db = psycopg.Connection[TupleRow]
APP = "limits_app:app"


@pytest.fixture
def spans_dsn(worker_dsn: str) -> str:
    with psycopg.connect(worker_dsn, autocommit=True) as setup:
        setup.execute(SPANS_DDL.encode())
    return worker_dsn


def enqueue(dsn: str, specs: list[pgqueue.JobSpec]) -> list[int]:
    return pgqueue.App(dsn).enqueue_many(None, specs)


def finished(db: Db, ids: list[int]) -> bool:
    row = db.execute("SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) AND state = 'completed'", [ids]).fetchone()
    return row is not None and row[0] == len(ids)


@contextmanager
def sampled(dsn: str, query: str, params: list[object] | None = None) -> Iterator[list[tuple[object, ...]]]:
    """Run ``query`` every 20 ms in a thread while the block runs; the rows of every sample."""
    samples: list[tuple[object, ...]] = []
    stop = threading.Event()

    def sample() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                samples.extend(conn.execute(query, params).fetchall())
                stop.wait(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(10)


def test_four_workers_never_run_more_of_a_queue_than_its_concurrency(
        spans_dsn: str, db: Db, spawn_worker: SpawnWorker, run_cli: RunCli) -> None:
    ids = enqueue(spans_dsn, [pgqueue.JobSpec("span", {"seconds": 0.1}, queue="limited") for _ in range(60)])
    done = run_cli(["queues", "set", "limited", "--concurrency", "3"], dsn=spans_dsn)
    assert done.returncode == 0, done.stderr

    with sampled(spans_dsn, "SELECT count(*) FROM pgqueue.jobs WHERE queue = 'limited' AND state = 'running'") as runs:
        # One slot each: four workers could run four at once, and reaching the limit of 3 takes
        # three of them (a wide worker that re-claims the moment its own outcomes are written can
        # otherwise hold all three slots itself, which proves nothing about the other processes).
        workers = [spawn_worker(spans_dsn, app_path=APP, concurrency=1) for _ in range(4)]
        wait_until(lambda: finished(db, ids), timeout=60, message="the limited queue's jobs did not all finish")

    counts = [int(str(r[0])) for r in runs]
    assert max(counts) <= 3, f"more than 3 running at once: {max(counts)}"
    assert max(counts) == 3, "the limit was never reached: the test proves nothing"
    # Handlers too (their own clock readings): never four overlapping runs.
    overlap = db.execute("""SELECT max(n) FROM (
        SELECT (SELECT count(*) FROM test_spans o WHERE o.started <= s.started AND o.ended > s.started) AS n
        FROM test_spans s) AS x""").fetchone()
    assert overlap is not None
    assert overlap[0] <= 3
    pids = {row[0] for row in db.execute("SELECT DISTINCT pid FROM test_spans")}
    assert len(pids) >= 3, "the limit was not shared across processes"
    assert all(w.alive() for w in workers)


@pytest.mark.timing
def test_a_rate_limited_queue_starts_no_more_than_its_rate_in_any_window_across_workers(
        spans_dsn: str, db: Db, spawn_worker: SpawnWorker) -> None:
    ids = enqueue(spans_dsn, [pgqueue.JobSpec("noop", queue="sms") for _ in range(140)])
    with psycopg.connect(spans_dsn) as conn:
        admin.set_queue_limits(conn, "sms", rate="20/s")
    for _ in range(4):
        spawn_worker(spans_dsn, app_path=APP, concurrency=10)

    wait_until(lambda: finished(db, ids), timeout=60, message="the rate-limited jobs did not all finish")

    starts: list[datetime] = [r[0] for r in db.execute(
        "SELECT started_at FROM pgqueue.jobs WHERE id = ANY(%s) ORDER BY started_at", [ids])]
    # No window of one second (sliding: starting at every start) holds more than 20 starts.
    worst = max(sum(1 for t in starts[i:] if t < s + timedelta(seconds=1)) for i, s in enumerate(starts))
    assert worst <= 20, f"{worst} starts within one second"
    # And the rate is used: 100 +- 10% starts in the first five seconds.
    first = starts[0]
    in_five = sum(1 for t in starts if t < first + timedelta(seconds=5))
    assert 90 <= in_five <= 100, f"{in_five} starts in the first 5 s at 20/s"
    ledger = db.execute("SELECT count(*) FROM pgqueue.rate_starts WHERE scope = 'queue:sms'").fetchone()
    assert ledger is not None
    assert ledger[0] <= 40, "the start ledger is not pruned as it ages"


def test_a_task_limit_holds_across_workers_and_queues(
        spans_dsn: str, db: Db, spawn_worker: SpawnWorker) -> None:
    ids = enqueue(spans_dsn, [pgqueue.JobSpec("task-limited", {"seconds": 0.1}, queue=("a" if n % 2 else "b"))
                              for n in range(30)])
    with sampled(spans_dsn, "SELECT count(*) FROM pgqueue.jobs WHERE task = 'task-limited' AND state = 'running'"
                 ) as runs:
        for _ in range(3):
            spawn_worker(spans_dsn, app_path=APP, concurrency=10)
        wait_until(lambda: finished(db, ids), timeout=60)

    counts = [int(str(r[0])) for r in runs]
    assert max(counts) == 2, f"task concurrency 2, saw {max(counts)} running"
    stored = db.execute("SELECT concurrency, rate_limit, group_concurrency FROM pgqueue.task_limits"
                        " WHERE task = 'task-limited'").fetchone()
    assert stored == (2, None, None)


@pytest.mark.timing
def test_a_task_rate_holds_across_workers(spans_dsn: str, db: Db, spawn_worker: SpawnWorker) -> None:
    ids = enqueue(spans_dsn, [pgqueue.JobSpec("task-rated") for _ in range(35)])
    for _ in range(2):
        spawn_worker(spans_dsn, app_path=APP, concurrency=10)

    wait_until(lambda: finished(db, ids), timeout=60)

    starts: list[datetime] = [r[0] for r in db.execute(
        "SELECT started_at FROM pgqueue.jobs WHERE id = ANY(%s) ORDER BY started_at", [ids])]
    worst = max(sum(1 for t in starts[i:] if t < s + timedelta(seconds=1)) for i, s in enumerate(starts))
    assert worst <= 10, f"{worst} starts within one second at 10/s"
    assert starts[-1] - starts[0] >= timedelta(seconds=3), "35 starts at 10/s cannot fit in less than 3 s"


def test_groups_run_one_at_a_time_in_order_and_side_by_side(
        spans_dsn: str, db: Db, spawn_worker: SpawnWorker) -> None:
    groups, per_group = 12, 8
    # Enqueued group after group: a claim that only looked at the oldest jobs would serialise.
    specs = [pgqueue.JobSpec("grouped", {"grp": f"g{g}", "seconds": 0.05}, group=f"g{g}")
             for g in range(groups) for _ in range(per_group)]
    ids = enqueue(spans_dsn, specs)
    for _ in range(3):
        spawn_worker(spans_dsn, app_path=APP, concurrency=10)

    wait_until(lambda: finished(db, ids), timeout=90, message="the grouped jobs did not all finish")

    spans: dict[str, list[tuple[int, datetime, datetime]]] = defaultdict(list)
    for job_id, grp, started, ended in db.execute(
            "SELECT job_id, grp, started, ended FROM test_spans ORDER BY started"):
        spans[grp].append((job_id, started, ended))
    assert len(spans) == groups
    for grp, runs in spans.items():
        assert [r[0] for r in runs] == sorted(r[0] for r in runs), f"group {grp} ran out of enqueue order"
        for before, after in itertools.pairwise(runs):
            assert after[1] >= before[2], f"group {grp}: job {after[0]} started before job {before[0]} ended"
    # Side by side: at some moment many groups were running.
    moments = [r[1] for runs in spans.values() for r in runs]
    widest = max(sum(1 for runs in spans.values() for r in runs if r[1] <= m < r[2]) for m in moments)
    assert widest >= 4, f"at most {widest} groups ran at once: groups were serialised"


@pytest.mark.timing
def test_a_limited_queue_never_blocks_another_queue_of_the_same_worker(
        spans_dsn: str, db: Db, spawn_worker: SpawnWorker) -> None:
    slow = enqueue(spans_dsn, [pgqueue.JobSpec("span", {"seconds": 2.0}, queue="slow") for _ in range(6)])
    with psycopg.connect(spans_dsn) as conn:
        admin.set_queue_limits(conn, "slow", concurrency=1)
    spawn_worker(spans_dsn, app_path=APP, concurrency=4, queues=["slow", "fast"])
    wait_until(lambda: db.execute("SELECT count(*) FROM test_spans WHERE queue = 'slow'").fetchone() == (1,))

    fast = enqueue(spans_dsn, [pgqueue.JobSpec("span", {"seconds": 0.01}, queue="fast") for _ in range(40)])

    # 40 short jobs through 3 free slots, while the slow queue holds its one slot and five wait.
    wait_until(lambda: finished(db, fast), timeout=5, message="the fast queue waited on the limited one")
    waiting = db.execute("SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) AND state = 'available'",
                         [slow]).fetchone()
    assert waiting is not None
    assert waiting[0] >= 4


def test_per_worker_slots_bound_each_queue_in_each_worker(
        spans_dsn: str, db: Db, spawn_worker: SpawnWorker) -> None:
    ids = enqueue(spans_dsn, [pgqueue.JobSpec("span", {"seconds": 0.2}, queue=q)
                              for q in ("bulk", "critical") for _ in range(20)])
    for _ in range(2):
        spawn_worker(spans_dsn, app_path=APP, concurrency=10, queues=["bulk=2", "critical=5"])
    wait_until(lambda: finished(db, ids), timeout=60)

    # Handlers running at once in one process, per queue, from their own clock readings. (A job
    # whose handler returned stays 'running' in the table until its outcome is written, so the
    # table may briefly show more: the slots bound handlers, as --concurrency does.)
    most: dict[str, int] = dict(db.execute("""
        SELECT queue, max(n) FROM (
            SELECT s.queue, (SELECT count(*) FROM test_spans o
                             WHERE o.pid = s.pid AND o.queue = s.queue
                               AND o.started <= s.started AND o.ended > s.started) AS n
            FROM test_spans s) AS x
        GROUP BY queue""").fetchall())
    assert most == {"bulk": 2, "critical": 5}


def test_a_killed_workers_slots_come_back_when_its_jobs_are_rescued(
        spans_dsn: str, db: Db, spawn_worker: SpawnWorker) -> None:
    # Two jobs that hang on their first attempt (they take both slots first), two short ones.
    ids = enqueue(spans_dsn, [pgqueue.JobSpec("span", {"seconds": 60, "later_seconds": 0.1}, queue="limited")
                              for _ in range(2)]
                  + [pgqueue.JobSpec("span", {"seconds": 0.1}, queue="limited") for _ in range(2)])
    with psycopg.connect(spans_dsn) as conn:
        admin.set_queue_limits(conn, "limited", concurrency=2)
    doomed = spawn_worker(spans_dsn, app_path=APP, concurrency=10)
    wait_until(lambda: db.execute("SELECT count(*) FROM test_spans").fetchone() == (2,), timeout=20)
    doomed.send(signal.SIGKILL)
    doomed.wait(10)
    with sampled(spans_dsn, "SELECT count(*) FROM pgqueue.jobs WHERE queue = 'limited' AND state = 'running'") as runs:
        # The dead worker's two jobs hold both slots until its lease expires and they are rescued.
        spawn_worker(spans_dsn, app_path=APP, concurrency=10)
        wait_until(lambda: finished(db, ids), timeout=60, message="the slots of the killed worker never came back")

    assert max(int(str(r[0])) for r in runs) <= 2
    attempts = sorted(r[0] for r in db.execute("SELECT attempt FROM pgqueue.jobs WHERE id = ANY(%s)", [ids]))
    assert attempts == [1, 1, 2, 2]


def test_bad_slots_are_one_line_errors(run_cli: RunCli, spans_dsn: str) -> None:
    for bad in ("bulk=0", "bulk=x", "Bad=2"):
        done = run_cli(["worker", "--app", APP, "--queue", bad], dsn=spans_dsn)
        assert done.returncode != 0
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def queue_limits_events(db: Db) -> int:
    row = db.execute("SELECT count(*) FROM pgqueue.job_events WHERE event = 'queue_limits_set'").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(("args", "message"), [
    (["sms", "--rate", "10/fortnight"], "rate '10/fortnight' must look like N/s"),
    (["sms", "--concurrency", "-1"], "concurrency"),
    (["sms", "--concurrency", "0"], "concurrency"),
    (["nosuchqueue", "--concurrency", "3"], "queue 'nosuchqueue' not found"),
])
def test_bad_limits_are_one_line_errors_and_change_nothing(
        spans_dsn: str, db: Db, run_cli: RunCli, args: list[str], message: str) -> None:
    enqueue(spans_dsn, [pgqueue.JobSpec("noop", queue="sms")])
    with psycopg.connect(spans_dsn) as conn:
        admin.set_queue_limits(conn, "sms", concurrency=5, rate="20/s")
    before = queue_limits_events(db)

    done = run_cli(["queues", "set", *args], dsn=spans_dsn)

    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr
    assert db.execute("SELECT concurrency, rate_limit, rate_period_seconds FROM pgqueue.queues WHERE name = 'sms'"
                      ).fetchone() == (5, 20, 1)
    assert queue_limits_events(db) == before


def test_queues_list_and_tasks_list_show_limits_and_usage(
        spans_dsn: str, db: Db, run_cli: RunCli, spawn_worker: SpawnWorker) -> None:
    ids = enqueue(spans_dsn, [pgqueue.JobSpec("span", {"seconds": 30}, queue="sms") for _ in range(4)]
                  + [pgqueue.JobSpec("task-limited", {"seconds": 30}) for _ in range(3)])
    with psycopg.connect(spans_dsn) as conn:
        admin.set_queue_limits(conn, "sms", concurrency=2, rate="10/m")
    spawn_worker(spans_dsn, app_path=APP, concurrency=10)
    wait_until(lambda: db.execute("SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) AND state = 'running'",
                                  [ids]).fetchone() == (4,), timeout=20)

    queues = json.loads(run_cli(["queues", "list", "--json"], dsn=spans_dsn).stdout)
    table = run_cli(["queues", "list"], dsn=spans_dsn).stdout
    tasks = json.loads(run_cli(["tasks", "list", "--json"], dsn=spans_dsn).stdout)
    task_table = run_cli(["tasks", "list"], dsn=spans_dsn).stdout

    sms = next(q for q in queues if q["name"] == "sms")
    assert (sms["running"], sms["concurrency"], sms["starts_in_window"], sms["rate"]) == (2, 2, 2, "10/m")
    assert "2/2" in table
    assert "2/10/m" in table
    limited = {t["task"]: t for t in tasks}
    assert (limited["task-limited"]["running"], limited["task-limited"]["concurrency"]) == (2, 2)
    assert (limited["task-rated"]["rate"], limited["grouped"]["group_concurrency"]) == ("10/s", 1)
    assert "task-limited" in task_table
