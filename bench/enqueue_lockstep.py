"""The arms of enqueue_vs_pgbench.py in short lockstep rounds, for a machine too noisy for 5 s windows.

    python bench/enqueue_lockstep.py --dsn postgresql://root@127.0.0.1:5432/postgres --rounds 40 --jobs 400 \
        [--tree /tmp/pgqueue-baseline ...]

On a shared machine the disk's fsync latency swings several-fold within seconds, so a 5 s pgbench
window and the 5,000 enqueues after it often see different machines. Here every arm runs
``--jobs`` transactions per round, back to back, in processes started once (pgbench runs with
``-t``, its connection time excluded): pgbench's INSERT, pgbench running pgqueue's ``insert_job``,
psycopg running the INSERT, psycopg running ``insert_job`` (its parameters bound, as pgqueue sends
them, without pgqueue's Python) and ``Task.enqueue`` per tree. Each arm's rate is divided by the
pgbench INSERT rate of its round; medians and quartiles over the rounds are printed.
"""

# ruff: noqa: T201, S603 - a command-line script: printing is its output; it runs pgbench

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

import psycopg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from enqueue_vs_pgbench import (  # the sibling script, found through the path above
    PGBENCH_SCHEMA,
    pgbench_scripts,
    pgbench_tps,
    recreate,
    with_db,
)

# One process per arm, started once: reads a job count per line, answers with the rate.
ARM = r"""
import sys, time, psycopg
dsn, mode = sys.argv[1], sys.argv[2]
if mode == "migrate":
    import pgqueue.migrations
    pgqueue.migrations.upgrade(dsn)
    raise SystemExit(0)
conn = psycopg.connect(dsn, autocommit=True)
if mode == "psycopg-insert":
    def one(i):
        conn.execute("INSERT INTO pgb_jobs (payload) VALUES (%s)", ['{"i": 1}'])
elif mode == "psycopg-insert_job":
    from psycopg.rows import tuple_row
    from pgqueue._db.jobs import JOBS
    params = {"task": "noop", "queue": "default", "priority": 100, "args": '{"i": 1}', "args_encrypted": None,
              "max_attempts": 20, "run_at": None, "delay": 0.0, "tags": None, "group_key": None, "actor": "bench",
              "channel": "pgqueue_jobs"}
    def one(i):
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(JOBS.insert_job, params).fetchone()
else:
    import pgqueue
    app = pgqueue.App(dsn)

    @app.task(name="noop")
    async def noop(job, i):
        pass

    def one(i):
        noop.enqueue(conn, i=i)
for i in range(20):
    one(-1)
print("ready", flush=True)
for line in sys.stdin:
    n = int(line)
    t0 = time.perf_counter()
    for i in range(n):
        one(i)
    print(n / (time.perf_counter() - t0), flush=True)
"""


class Arm:
    """A persistent process running one kind of transaction on request."""

    def __init__(self, dsn: str, mode: str, tree: str) -> None:
        env = dict(os.environ, PYTHONPATH=tree)
        self.proc = subprocess.Popen([sys.executable, "-c", ARM, dsn, mode], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=tree)
        if self.proc.stdout is None or self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"arm {mode} in {tree} did not start")

    def rate(self, n: int) -> float:
        assert self.proc.stdin is not None  # noqa: S101 - both pipes are set by Popen
        assert self.proc.stdout is not None  # noqa: S101
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True, help="any database of the server (scratch ones are made beside it)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=400, help="transactions per arm per round")
    parser.add_argument("--tree", action="append", default=[], help="more pgqueue trees to measure each round")
    options = parser.parse_args()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = [here, *options.tree]
    tag = os.getpid()
    pgb = f"els_pgb_{tag}"
    pgqs = [f"els_pgq_{tag}_{k}" for k in range(len(trees))]
    admin = psycopg.connect(options.dsn, autocommit=True)
    arms: dict[str, Arm] = {}
    try:
        recreate(admin, pgb)
        with psycopg.connect(with_db(options.dsn, pgb), autocommit=True) as conn:
            conn.execute(PGBENCH_SCHEMA)
        for tree, db in zip(trees, pgqs, strict=True):
            recreate(admin, db)
            subprocess.run([sys.executable, "-c", ARM, with_db(options.dsn, db), "migrate"], cwd=tree,
                           env=dict(os.environ, PYTHONPATH=tree), check=True)
        arms["psycopg INSERT"] = Arm(with_db(options.dsn, pgb), "psycopg-insert", here)
        arms["psycopg insert_job"] = Arm(with_db(options.dsn, pgqs[0]), "psycopg-insert_job", here)
        for k, (tree, db) in enumerate(zip(trees, pgqs, strict=True)):
            arms[f"tree{k} Task.enqueue"] = Arm(with_db(options.dsn, db), "enqueue", tree)
        ratios: dict[str, list[float]] = {"pgbench insert_job": [], **{name: [] for name in arms}}
        with pgbench_scripts() as (insert, insert_job):
            for r in range(options.rounds):
                t = ["-t", str(options.jobs)]
                tps = pgbench_tps(with_db(options.dsn, pgb), insert, t)
                job_tps = pgbench_tps(with_db(options.dsn, pgqs[0]), insert_job, t)
                ratios["pgbench insert_job"].append(job_tps / tps)
                names = list(arms) if r % 2 == 0 else list(reversed(arms))
                for name in names:
                    ratios[name].append(arms[name].rate(options.jobs) / tps)
        print(f"rate / pgbench INSERT's rate of the same round ({options.rounds} rounds of "
              f"{options.jobs} transactions):")
        for name, values in ratios.items():
            q1, median, q3 = statistics.quantiles(values, n=4)
            where = f"  ({trees[int(name[4])]})" if name.startswith("tree") else ""
            print(f"  {name:22} median {median:.3f}  quartiles {q1:.3f}-{q3:.3f}{where}")
    finally:
        for arm in arms.values():
            arm.close()
        for name in [pgb, *pgqs]:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main()
