"""Profile one pgqueue worker draining a backlog of no-op jobs, and count its SQL round trips.

    python bench/profile_worker.py --dsn postgresql://root@127.0.0.1:5432/postgres \
        --jobs 50000 --concurrency 50 [--py-spy /tmp/worker.raw] [--handler sync]

The worker is the benchmark's own child (``pgqueue._bench.child``) run in a wrapper that counts
every ``execute`` call per query (first SQL line) on psycopg's sync and async cursors and
connections, so the counts cover the claim loop, the acker, the listener, the heartbeat and the
maintenance thread. The database side is checked with ``pg_stat_database.xact_commit`` deltas
(every autocommit statement is a transaction). With ``--py-spy`` the worker is recorded with
``py-spy record --format raw`` and the top frames (self and total) are printed.
"""

# ruff: noqa: T201 - a command-line script: printing is its output

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from pgqueue._bench.database import ScratchDatabases
from pgqueue._bench.workers import DSN_ENV, QUEUE, TASK
from pgqueue._db.bench import BenchProbe
from pgqueue.app import App
from pgqueue.jobs import JobSpec
from pgqueue.settings import Settings

# Runs in the child: patch psycopg's execute entry points, then run the benchmark worker.
_COUNTING_CHILD = r"""
import atexit, collections, json, os, sys, time
import psycopg
counts = collections.Counter()
seconds = collections.Counter()
def label(query):
    text = query.as_string(None) if hasattr(query, "as_string") else str(query)
    lines = [l.strip() for l in text.strip().splitlines() if l.strip() and not l.strip().startswith("--")]
    return " ".join(lines[:2])[:90]
def wrap(cls, name, is_async):
    original = getattr(cls, name)
    if is_async:
        async def patched(self, query, *a, **k):
            key = label(query)
            counts[key] += 1
            started = time.perf_counter()
            try:
                return await original(self, query, *a, **k)
            finally:
                seconds[key] += time.perf_counter() - started
    else:
        def patched(self, query, *a, **k):
            counts[label(query)] += 1
            return original(self, query, *a, **k)
    setattr(cls, name, patched)
wrap(psycopg.AsyncCursor, "execute", True)
wrap(psycopg.Cursor, "execute", False)
atexit.register(lambda: open(os.environ["BENCH_COUNTS_FILE"], "w").write(json.dumps([counts, seconds])))
sys.argv = ["pgqueue._bench.child"] + sys.argv[1:]
from pgqueue._bench.child import _main
sys.exit(_main())
"""


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _scalar(conn: psycopg.Connection[Any], query: Any) -> Any:
    row = conn.execute(query).fetchone()
    return row[0] if row else None


def _backends(conn: psycopg.Connection[Any]) -> dict[int, str]:
    rows = conn.execute("SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid()").fetchall()
    return {int(pid): str(name) for pid, name in rows}


def _top(raw: Path, limit: int) -> None:
    """Print the top frames by self and by total samples from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    print(f"\n{samples} samples")
    for title, counter in (("self", own), ("total (inclusive)", total)):
        print(f"\n--- top {limit} by {title} ---")
        for frame, count in counter.most_common(limit):
            print(f"{100 * count / samples:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True, help="server DSN (a scratch database is created there)")
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--handler", choices=("async", "sync"), default="async")
    parser.add_argument("--py-spy", dest="py_spy", help="write py-spy raw output here")
    parser.add_argument("--top", type=int, default=30)
    options = parser.parse_args()

    databases = ScratchDatabases(options.dsn)
    databases.create_template()
    try:
        with databases.fresh() as dsn:
            conn = psycopg.connect(dsn, autocommit=True)
            probe = BenchProbe(conn)
            probe.set_queue_paused(QUEUE, True, actor="profile")
            app = App(dsn, settings=Settings(dsn=dsn))
            for start in range(0, options.jobs, 10_000):
                app.enqueue_many(conn, [JobSpec(TASK, {"i": i}, queue=QUEUE)
                                        for i in range(start, min(start + 10_000, options.jobs))])
            counts_file = Path(tempfile.mkstemp(suffix=".json")[1])
            env = dict(os.environ, **{DSN_ENV: dsn, "BENCH_COUNTS_FILE": str(counts_file)})
            child = subprocess.Popen(  # noqa: S603 - our own interpreter
                [sys.executable, "-c", _COUNTING_CHILD, "--concurrency", str(options.concurrency),
                 "--handler", options.handler], env=env, stdin=subprocess.PIPE, text=True)
            while probe.live_workers() < 1:
                time.sleep(0.05)
            time.sleep(0.5)
            spy = None
            if options.py_spy:
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(child.pid), "--format", "raw",  # noqa: S603, S607
                                        "--rate", "250", "--output", options.py_spy, "--nonblocking"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            # Read with another connection after everyone else has disconnected: a backend flushes
            # its statistics at exit, and otherwise only about once a second.
            xact_sql = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
            with psycopg.connect(dsn, autocommit=True) as stats:
                xacts_before = _scalar(stats, xact_sql)
            backends = _backends(conn)
            cpu_before = {pid: _cpu_seconds(pid) for pid in [child.pid, *backends]}
            started = probe.clock()
            probe.set_queue_paused(QUEUE, False, actor="profile")
            probes = 2
            while probe.count_completed() < options.jobs:
                probes += 1
                time.sleep(0.1)
            finished = probe.nth_finished_at(options.jobs)
            probes += 2
            # Connections opened during the drain (the acker connects on its first batch) count from 0.
            backends.update(_backends(conn))
            cpu = {pid: _cpu_seconds(pid) - cpu_before.get(pid, 0.0) for pid in [child.pid, *backends]}
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            child.stdin.close()  # type: ignore[union-attr]
            child.wait(60)
            conn.close()
            time.sleep(1.5)
            with psycopg.connect(dsn, autocommit=True) as stats:
                xacts = _scalar(stats, xact_sql) - xacts_before - probes - 1
            elapsed = (finished - started).total_seconds()
            counted, timed = json.loads(counts_file.read_text())
            counts, seconds = collections.Counter(counted), collections.Counter(timed)
            counts_file.unlink()
    finally:
        databases.drop_all()

    jobs = options.jobs
    print(f"{jobs} jobs, concurrency {options.concurrency}, {options.handler} handler: "
          f"{elapsed:.2f} s = {jobs / elapsed:,.0f} jobs/s")
    print(f"server transactions in the database during the drain (probes subtracted): {xacts} "
          f"= {xacts / jobs:.3f} per job")
    print("CPU during the drain, ms per job: worker process %.3f; " % (1000 * cpu[child.pid] / jobs)
          + "; ".join(f"backend {backends[pid] or pid} {1000 * cpu[pid] / jobs:.3f}" for pid in backends
                      if cpu[pid] > 0))
    statements = sum(counts.values())
    print(f"client execute() calls over the worker's life: {statements} = {statements / jobs:.3f} per job")
    print("  (async calls also show the mean time from send to result, as the event loop saw it)")
    for query, count in counts.most_common(12):
        mean = f"{1000 * seconds[query] / count:7.2f} ms" if query in seconds else " " * 10
        print(f"  {count:8d}  {count / jobs:7.3f}/job  {mean}  {query}")
    if options.py_spy:
        _top(Path(options.py_spy), options.top)


if __name__ == "__main__":
    main()
