"""CPU time per job of a draining `pgqueue worker`: its processes and each PostgreSQL backend serving it.

    python bench/cpu_per_job.py --dsn postgresql://root@127.0.0.1:5432/postgres \
        [--jobs 100000] [--concurrency 50] [--processes 2] [--queue-limit concurrency|rate] \
        [--window 2.5] [--tree /tmp/pgqueue-other] [--py-spy /tmp/worker.raw]

A scratch database gets ``--jobs`` no-op jobs (``enqueue_many``, then VACUUM ANALYZE and a
CHECKPOINT); ``pgqueue worker --log-level warning`` drains them. From 1.5 s after the spawn
(start-up and ramp-up left out) for ``--window`` seconds, the script reads the user+system CPU
ticks of the worker's processes and of every backend of the scratch database from
``/proc/<pid>/stat``, and the completed jobs from the table, and prints microseconds of CPU per job
for each side and for each backend (named by the first words of its last statement). On a machine
whose cores the worker and the server share, the total is what bounds throughput: 2 cores / the
total = the jobs per second the machine can do at that setting.

``--queue-limit`` puts a limit that never binds on the queue (concurrency 10,000 or 1,000,000
starts a second) and makes the worker serve it by name: the limited claim's cost. ``--tree``
runs the worker (not this script) from another checkout, for an A/B on the same machine.
``--py-spy`` records the first worker process (``py-spy record --format raw``) over the window.
"""

# ruff: noqa: T201, S603, S607 - a command-line script: printing is its output; it runs pgqueue and py-spy

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from pgqueue import App
from pgqueue._bench.database import ScratchDatabases
from pgqueue._db.databases import with_database
from pgqueue.jobs import JobSpec

APP = '''
from pgqueue import App
app = App()

@app.task(name="noop")
async def noop(job, **kw):
    return None
'''
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", required=True, help="a server where the role may create databases")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--queue-limit", choices=["concurrency", "rate"])
    parser.add_argument("--window", type=float, default=2.5)
    parser.add_argument("--tree", help="run the worker from this checkout")
    parser.add_argument("--py-spy", dest="py_spy", help="record the first worker process to this raw file")
    args = parser.parse_args()

    # The bench's scratch databases (pgqueue_bench_*): the migrated template is this run's database.
    databases = ScratchDatabases(args.dsn)
    workdir = Path(tempfile.mkdtemp(prefix="cpu_per_job_"))
    (workdir / "cpu_per_job_app.py").write_text(APP)
    app = App()  # enqueues by task name: the worker's app (APP above) runs them
    worker: subprocess.Popen[bytes] | None = None
    try:
        databases.create_template()
        dsn = with_database(args.dsn, databases.prefix)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for start in range(0, args.jobs, 50_000):
                end = min(args.jobs, start + 50_000)
                app.enqueue_many(conn, [JobSpec("noop", {"i": i}) for i in range(start, end)])
            cli = [sys.executable, "-m", "pgqueue"]
            command = [*cli, "--log-level", "warning", "worker", "--app", "cpu_per_job_app:app",
                       "--concurrency", str(args.concurrency), "--processes", str(args.processes)]
            if args.queue_limit:
                limit = ["--concurrency", "10000"] if args.queue_limit == "concurrency" else ["--rate", "1000000/s"]
                subprocess.run([*cli, "queues", "set", "default", *limit, "--dsn", dsn], check=True,
                               stdout=subprocess.DEVNULL)
                command += ["--queue", "default"]
            conn.execute("VACUUM ANALYZE pgqueue.jobs")
            conn.execute("CHECKPOINT")
            path = os.pathsep.join(filter(None, [args.tree, str(workdir)]))
            worker = subprocess.Popen(command, env=dict(os.environ, PGQUEUE_DSN=dsn, PYTHONPATH=path))
            time.sleep(1.5)

            def snapshot() -> tuple[float, float, dict[int, tuple[str, float]], int]:
                worker_cpu = sum(cpu_seconds(pid) for pid in [worker.pid, *children(worker.pid)])
                rows = conn.execute("SELECT pid, left(regexp_replace(query, '\\s+', ' ', 'g'), 40)"
                                    " FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                                    [databases.prefix]).fetchall()
                backends = {pid: (query, cpu_seconds(pid)) for pid, query in rows}
                done = conn.execute("SELECT count(*) FROM pgqueue.jobs WHERE state = 'completed'").fetchone()
                return time.monotonic(), worker_cpu, backends, done[0] if done else 0

            spy = None
            if args.py_spy:
                first = (children(worker.pid) or [worker.pid])[0]
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(first), "--duration", str(int(args.window)),
                                        "--rate", "500", "--nonblocking", "--format", "raw", "-o", args.py_spy],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t0, worker0, backends0, done0 = snapshot()
            time.sleep(args.window)
            t1, worker1, backends1, done1 = snapshot()
            if spy is not None:
                spy.wait()
        jobs = done1 - done0
        if jobs <= 0:
            sys.exit("no job completed in the window: is the backlog too small?")
        per_backend = sorted(((cpu - backends0.get(pid, ("", 0.0))[1]) * 1e6 / jobs, query)
                             for pid, (query, cpu) in backends1.items())
        backend_total = sum(us for us, _ in per_backend)
        worker_us = (worker1 - worker0) * 1e6 / jobs
        print(f"{args.processes} x {args.concurrency}{' ' + args.queue_limit + '-limited' if args.queue_limit else ''}:"
              f" {jobs / (t1 - t0):,.0f} jobs/s; CPU per job: worker {worker_us:.1f} us, backends"
              f" {backend_total:.1f} us, total {worker_us + backend_total:.1f} us")
        for us, query in per_backend:
            if us >= 0.2:
                print(f"  {us:6.1f} us  {query}")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        databases.drop_all()


if __name__ == "__main__":
    main()
