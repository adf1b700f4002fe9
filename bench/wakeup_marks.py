"""Where an idle worker's wake-up latency goes: marks inside `pgqueue worker` for each lone job.

    python bench/wakeup_marks.py --dsn postgresql://root@127.0.0.1:5432/postgres [--jobs 200] [--gap-ms 50] \
        [--tree /tmp/pgqueue-other]

A scratch database, a ``pgqueue worker`` (defaults, ``--log-level warning``) and a producer that
enqueues one job every ``--gap-ms`` with ``Task.enqueue`` on an autocommit connection, as the peer
harness's latency scenario does. The worker runs with a ``sitecustomize`` (from a temporary
directory on its PYTHONPATH) that records monotonic timestamps: the listener waking the claim loop,
``AsyncJobStore.claim_jobs`` called and returning jobs, psycopg sending a prepared statement, and
the handler starting. Printed: the median of each mark after the enqueue's commit returned, over
the jobs (the first mark of each kind in the job's window), and the p50/p95/p99 of the handler
start, the harness's figure.
"""

# ruff: noqa: T201 - a command-line script: printing is its output

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from pgqueue import App
from pgqueue._bench.database import ScratchDatabases
from pgqueue._db.databases import with_database

APP = '''
import os, time
from pgqueue import App
app = App()
_marks = None

@app.task(name="mark")
async def mark(job, **kw):
    global _marks
    now = time.monotonic_ns()
    if _marks is None:
        _marks = open(os.environ["WAKEUP_MARKS"] + ".handler", "a", buffering=1)
    _marks.write(f"{job.id} {now}\\n")
'''

# Imported by the worker's interpreter at start (sitecustomize): wraps the wake-up path's steps.
PROBE = '''
import atexit, os, time
_marks = []
def _mark(kind, at=None):
    _marks.append((kind, time.monotonic_ns() if at is None else at))
def _dump():
    with open(os.environ["WAKEUP_MARKS"] + ".probe", "a") as out:
        out.writelines(f"{kind} {at}\\n" for kind, at in _marks)
atexit.register(_dump)

import pgqueue._worker.listener as _listener
_init = _listener.Listener.__init__
def _listener_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    wake = self.wake
    def marked_wake():
        _mark("woken")
        wake()
    self.wake = marked_wake
_listener.Listener.__init__ = _listener_init

import pgqueue._db.jobs as _jobs
_claim = _jobs.AsyncJobStore.claim_jobs
async def _marked_claim(self, *args, **kwargs):
    called = time.monotonic_ns()
    jobs = await _claim(self, *args, **kwargs)
    if jobs:
        _mark("claim_called", called)
        _mark("claim_answered")
    return jobs
_jobs.AsyncJobStore.claim_jobs = _marked_claim

import psycopg._cursor_base as _cursor
_send = _cursor.BaseCursor._send_query_prepared
def _marked_send(self, *args, **kwargs):
    _mark("statement_sent")
    return _send(self, *args, **kwargs)
_cursor.BaseCursor._send_query_prepared = _marked_send
'''

KINDS = ("woken", "claim_called", "statement_sent", "claim_answered")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", required=True, help="a server where the role may create databases")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=50.0)
    parser.add_argument("--tree", help="run the worker from this checkout")
    args = parser.parse_args()

    # The bench's scratch databases (pgqueue_bench_*): the migrated template is this run's database.
    databases = ScratchDatabases(args.dsn)
    workdir = Path(tempfile.mkdtemp(prefix="wakeup_marks_"))
    (workdir / "wakeup_marks_app.py").write_text(APP)
    (workdir / "sitecustomize.py").write_text(PROBE)
    marks = workdir / "marks"
    worker: subprocess.Popen[bytes] | None = None
    try:
        databases.create_template()
        dsn = with_database(args.dsn, databases.prefix)
        path = os.pathsep.join(filter(None, [args.tree, str(workdir)]))
        worker = subprocess.Popen([sys.executable, "-m", "pgqueue", "--log-level", "warning", "worker", "--app",
                                   "wakeup_marks_app:app"],
                                  env=dict(os.environ, PGQUEUE_DSN=dsn, PYTHONPATH=path, WAKEUP_MARKS=str(marks)))
        time.sleep(2)  # registered, listening, idle
        app = App()
        committed: dict[int, int] = {}
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(args.jobs):
                job_id = app.enqueue(conn, "mark", {"i": i})
                committed[job_id] = time.monotonic_ns()
                time.sleep(args.gap_ms / 1000)
        time.sleep(0.5)
        worker.terminate()
        worker.wait(30)
        handler_lines = Path(f"{marks}.handler").read_text().splitlines()
        started = {int(job): int(at) for job, at in (line.split() for line in handler_lines)}
        probe_lines = Path(f"{marks}.probe").read_text().splitlines()
        probe = [(kind, int(at)) for kind, at in (line.split() for line in probe_lines)]
        latencies = sorted((started[job] - at) / 1e6 for job, at in committed.items() if job in started)
        print(f"{len(latencies)} of {args.jobs} jobs; handler start after the enqueue's commit: p50"
              f" {statistics.median(latencies):.2f} ms, p95 {latencies[int(0.95 * (len(latencies) - 1))]:.2f},"
              f" p99 {latencies[int(0.99 * (len(latencies) - 1))]:.2f}")
        ran = [job for job in committed if job in started]
        for kind in KINDS:
            firsts = {job: next((at for k, at in probe if k == kind and committed[job] < at <= started[job]), None)
                      for job in ran}
            found = [(at - committed[job]) / 1000 for job, at in firsts.items() if at is not None]
            if found:
                print(f"  {kind:15s} median {statistics.median(found):6.0f} us after the commit ({len(found)} jobs)")
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        databases.drop_all()


if __name__ == "__main__":
    main()
