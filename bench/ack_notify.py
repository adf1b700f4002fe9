"""Paired micro-benchmark of the ack statement: a baseline tree's complete_jobs (which NOTIFYs
pgqueue_done on every statement) against this tree's (which NOTIFYs only while a waiter holds the
waiters' advisory lock; none does here).

    python bench/ack_notify.py BASELINE_TREE [BLOCK BLOCKS BATCH [async-commit]]
    python bench/ack_notify.py /tmp/main-tree 500 20 1 async-commit

Runs claim(1)+complete(1) round trips (what a concurrency-1 worker does per job) on one scratch
database, alternating blocks of the two complete_jobs variants, so both see the same background
load. Also a batch-of-50 variant (what a c50 worker's acker writes). A second session LISTENs on
pgqueue_jobs, as a worker's listener does (NOTIFY signals every listening backend of the database).
"""

# ruff: noqa: T201, S101 - a command-line script: printing is its output, asserts its sanity checks

from __future__ import annotations

import os
import re
import statistics
import sys
import time
import uuid

import psycopg

from pgqueue import _migrate
from pgqueue._db.jobs import JOBS, Outcome, _complete_params

SERVER = os.environ.get("PGQUEUE_BENCH_SERVER", "postgresql://root@127.0.0.1:5432/postgres")
DB = f"pgqueue_bench_acknotify_{uuid.uuid4().hex[:8]}"
with open(f"{sys.argv[1]}/pgqueue/_db/queries/jobs.sql", encoding="utf-8") as _baseline:
    _found = re.search(r"-- name: complete_jobs\n(.*?)\n\n-- name:", _baseline.read(), re.S)
assert _found is not None
WITH = _found.group(1).strip()  # the baseline's statement
WITHOUT = JOBS.complete_jobs  # this tree's

BLOCK = int(sys.argv[2]) if len(sys.argv) > 2 else 300
BLOCKS = int(sys.argv[3]) if len(sys.argv) > 3 else 16
BATCH = int(sys.argv[4]) if len(sys.argv) > 4 else 1


def main() -> None:
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {DB}")
    dsn = SERVER.rsplit("/", 1)[0] + "/" + DB
    try:
        _migrate.upgrade(dsn)
        run(dsn)
    finally:
        with psycopg.connect(SERVER, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {DB} WITH (FORCE)")


def run(dsn: str) -> None:
    total = BLOCK * BLOCKS * 2 * BATCH
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgqueue_jobs")
        if len(sys.argv) > 5 and sys.argv[5] == "async-commit":  # expose CPU cost: no fsync wait per commit
            conn.execute("SET synchronous_commit = off")
        conn.execute("INSERT INTO pgqueue.jobs (task, queue, state, args) "
                     "SELECT 't', 'q', 'available', '{}'::jsonb FROM generate_series(1, %s)", [total])
        conn.execute("VACUUM ANALYZE pgqueue.jobs")
        rates: dict[str, list[float]] = {"with": [], "without": []}
        for block in range(BLOCKS * 2):
            name = ("with", "without")[(block + block // 2) % 2]  # ABBA order
            statement = WITH if name == "with" else WITHOUT
            started = time.perf_counter()
            for _ in range(BLOCK):
                rows = conn.execute(
                    "UPDATE pgqueue.jobs SET state = 'running', lease_token = gen_random_uuid(), attempt = attempt + 1 "
                    "WHERE id IN (SELECT id FROM pgqueue.jobs WHERE state = 'available' ORDER BY id LIMIT %s "
                    "FOR UPDATE SKIP LOCKED) RETURNING id, lease_token", [BATCH]).fetchall()
                outcomes = [Outcome(job_id=r[0], token=r[1], state="completed", result=None) for r in rows]
                done = conn.execute(statement, _complete_params(outcomes)).fetchall()
                assert len(done) == len(rows) == BATCH
            rates[name].append(BLOCK * BATCH / (time.perf_counter() - started))
    a, b = statistics.median(rates["with"]), statistics.median(rates["without"])
    pairs = [w / wo for w, wo in zip(rates["with"], rates["without"], strict=True)]
    mode = " ".join(sys.argv[5:]) or "sync-commit"
    print(f"{mode} batch {BATCH}: baseline {a:,.0f} jobs/s, this tree {b:,.0f} jobs/s; "
          f"baseline/this tree, median of paired blocks {statistics.median(pairs):.3f} "
          f"(min {min(pairs):.3f}, max {max(pairs):.3f}; {BLOCKS} blocks of {BLOCK} each)")


if __name__ == "__main__":
    main()
