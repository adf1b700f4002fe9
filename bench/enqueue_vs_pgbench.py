"""Single-job enqueue against pgbench's single INSERT, alternately, in one run (issue 15's target).

    python bench/enqueue_vs_pgbench.py --dsn postgresql://root@127.0.0.1:5432/postgres --rounds 5 \
        [--tree /tmp/pgqueue-baseline ...]

Each round: ``pgbench -n -M prepared -j 1 -c 1 -T 5`` of the peer benchmark's insert.sql (a plain
single-row INSERT, autocommit) on a fresh copy of its schema, then, for each tree (the current
one first), 5,000 ``Task.enqueue(conn, i=i)`` calls on one autocommit psycopg connection against a
fresh database migrated by that tree's ``pgqueue.migrations.upgrade`` -- what the peer harness
does. The figure is jobs/s over pgbench's tps of the same round; the median over the rounds is
the result (the machine is shared: only ratios from one interleaved run mean anything).
A tree is a directory holding a ``pgqueue`` package, put first on PYTHONPATH of its subprocess.

Two more arms each round say where the gap is:
- ``pgbench insert_job``: pgbench -M prepared running pgqueue's own ``insert_job`` statement (its
  parameters filled in as constants) on the pgqueue database: the server and protocol cost of an
  enqueue without Python;
- ``psycopg INSERT``: insert.sql's INSERT, 5,000 times through psycopg (one autocommit connection,
  a bound parameter, prepared after 5 executions), on the pgbench database: the most any enqueue
  through psycopg could reach, whatever its SQL.
"""

# ruff: noqa: T201, S603, S607 - a command-line script: printing is its output; it runs pgbench/psql

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import psycopg

PGBENCH_SCHEMA = """
CREATE TABLE pgb_jobs (
    id      bigserial   PRIMARY KEY,
    payload jsonb       NOT NULL,
    state   text        NOT NULL DEFAULT 'ready',
    run_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pgb_jobs_ready ON pgb_jobs (run_at, id) WHERE state = 'ready';
"""
PGBENCH_INSERT = "INSERT INTO pgb_jobs (payload) VALUES ('{\"i\": 1}');\n"

# insert_job's parameters for the pgbench arm: a job available at once, as Task.enqueue sends it.
INSERT_JOB_VALUES = {
    "task": "'noop'", "queue": "'default'", "priority": "100", "args": "'{\"i\": 1}'", "args_encrypted": "NULL",
    "max_attempts": "20", "run_at": "NULL", "delay": "0", "tags": "NULL", "group_key": "NULL", "actor": "'bench'",
    "channel": "'pgqueue_jobs'",
}

# Run in a subprocess per tree, so each imports its own pgqueue.
ENQUEUE_SCRIPT = """
import sys, time
import psycopg, pgqueue
dsn, n = sys.argv[1], int(sys.argv[2])
if sys.argv[3] == "migrate":
    import pgqueue.migrations
    pgqueue.migrations.upgrade(dsn)
    raise SystemExit(0)
app = pgqueue.App(dsn)

@app.task(name="noop")
async def noop(job, i):
    pass

with psycopg.connect(dsn, autocommit=True) as conn:
    noop.enqueue(conn, i=-1)
    t0 = time.perf_counter()
    for i in range(n):
        noop.enqueue(conn, i=i)
    print(time.perf_counter() - t0)
"""


def with_db(dsn: str, name: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, dbname=name)


def recreate(admin: psycopg.Connection, name: str, template: str | None = None) -> None:
    admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))


def pgbench_tps(dsn: str, script: str, length: list[str]) -> float:
    """pgbench's tps (connection time excluded) for one client; ``length`` is ``["-T", s]`` or ``["-t", n]``."""
    out = subprocess.run(["pgbench", "-n", "-M", "prepared", "-j", "1", "-c", "1", *length, "-f", script, dsn],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"tps = ([0-9.]+)", out)
    if match is None:
        raise SystemExit(f"no tps in pgbench output:\n{out}")
    return float(match.group(1))


def insert_job_script() -> str:
    """pgqueue's insert_job statement with constants for its parameters, as a pgbench script."""
    from pgqueue._db.jobs import JOBS

    body = re.sub(r"%\((\w+)\)[sb]", lambda m: INSERT_JOB_VALUES[m.group(1)], JOBS.insert_job)
    # pgbench reads one statement per line unless it ends with a semicolon: strip the comments.
    lines = [ln for ln in body.splitlines() if not ln.lstrip().startswith("--")]
    return " ".join(ln.strip() for ln in lines).rstrip(";") + ";\n"


@contextlib.contextmanager
def pgbench_scripts() -> Iterator[tuple[str, str]]:
    """Paths of two pgbench script files: the bare INSERT and pgqueue's insert_job."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as insert, \
            tempfile.NamedTemporaryFile("w", suffix=".sql") as insert_job:
        insert.write(PGBENCH_INSERT)
        insert.flush()
        insert_job.write(insert_job_script())
        insert_job.flush()
        yield insert.name, insert_job.name


def psycopg_rate(dsn: str, n: int) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(10):
            conn.execute("INSERT INTO pgb_jobs (payload) VALUES (%s)", ['{"i": -1}'])
        t0 = time.perf_counter()
        for i in range(n):
            conn.execute("INSERT INTO pgb_jobs (payload) VALUES (%s)", [f'{{"i": {i}}}'])
        return n / (time.perf_counter() - t0)


def enqueue_rate(tree: str, dsn: str, n: int) -> float:
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run([sys.executable, "-c", ENQUEUE_SCRIPT, dsn, str(n), "run"], env=env, capture_output=True,
                         text=True, check=True).stdout
    return n / float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True, help="any database of the server (scratch ones are made beside it)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--seconds", type=int, default=5, help="pgbench -T")
    parser.add_argument("--tree", action="append", default=[], help="more pgqueue trees to measure each round")
    options = parser.parse_args()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = [here, *options.tree]
    tag = os.getpid()
    pgb_tpl, pgb = f"evp_pgb_tpl_{tag}", f"evp_pgb_{tag}"
    tpls = [f"evp_pgq_tpl_{tag}_{k}" for k in range(len(trees))]
    pgq = f"evp_pgq_{tag}"
    admin = psycopg.connect(options.dsn, autocommit=True)
    made = [pgb_tpl, pgb, pgq, *tpls]
    try:
        recreate(admin, pgb_tpl)
        with psycopg.connect(with_db(options.dsn, pgb_tpl), autocommit=True) as conn:
            conn.execute(PGBENCH_SCHEMA)
        for tree, tpl in zip(trees, tpls, strict=True):
            recreate(admin, tpl)
            subprocess.run([sys.executable, "-c", ENQUEUE_SCRIPT, with_db(options.dsn, tpl), "0", "migrate"],
                           env=dict(os.environ, PYTHONPATH=tree), check=True)
        arms = ["pgbench insert_job", "psycopg INSERT", *(f"tree{k}" for k in range(len(trees)))]
        ratios: dict[str, list[float]] = {arm: [] for arm in arms}
        with pgbench_scripts() as (script, pgq_script):
            for r in range(options.rounds):
                recreate(admin, pgb, pgb_tpl)
                tps = pgbench_tps(with_db(options.dsn, pgb), script, ["-T", str(options.seconds)])
                rates = {"psycopg INSERT": psycopg_rate(with_db(options.dsn, pgb), options.jobs)}
                recreate(admin, pgq, tpls[0])
                rates["pgbench insert_job"] = pgbench_tps(with_db(options.dsn, pgq), pgq_script,
                                                            ["-T", str(options.seconds)])
                for k, (tree, tpl) in enumerate(zip(trees, tpls, strict=True)):
                    recreate(admin, pgq, tpl)
                    rates[f"tree{k}"] = enqueue_rate(tree, with_db(options.dsn, pgq), options.jobs)
                line = [f"round {r + 1}: pgbench INSERT {tps:7,.0f} tps"]
                for arm in arms:
                    ratios[arm].append(rates[arm] / tps)
                    line.append(f"{arm} {rates[arm]:7,.0f}/s {rates[arm] / tps:.3f}")
                print(" | ".join(line), flush=True)
        print("median ratio to pgbench's INSERT of the same round:")
        for arm in arms:
            where = f" ({trees[int(arm[4:])]}: 5,000 Task.enqueue)" if arm.startswith("tree") else ""
            print(f"  {arm:20} {statistics.median(ratios[arm]):.3f}{where}   "
                  f"({', '.join(f'{v:.3f}' for v in ratios[arm])})")
    finally:
        for name in made:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


if __name__ == "__main__":
    main()
