"""A benchmark run killed outright (SIGKILL) cannot drop its scratch databases; the next run on the
server drops them, and never those of a run that is still going, however idle.

Real processes: each run is a Python process that creates its template and a clone through
``ScratchDatabases``, reports their names, then waits; one is SIGKILLed, the other kept alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest

from pgqueue._bench.database import FAMILY, ScratchDatabases
from pgqueue._db.databases import drop_abandoned_runs

RUN = """
import sys, time
from pgqueue._bench.database import FAMILY, ScratchDatabases
from pgqueue._db.databases import drop_abandoned_runs
databases = ScratchDatabases(sys.argv[1])
databases.create_template()
with databases.fresh():
    print(databases.prefix, flush=True)
    time.sleep(600)
"""


def names(dsn: str, prefix: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1",
                            [prefix]).fetchall()
    return [row[0] for row in rows]


@pytest.fixture
def run(pg_server_dsn: str) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(30)
    # Killed too, the live run left its databases: the sweep under test drops them.
    drop_abandoned_runs(pg_server_dsn, FAMILY)


def start_run(dsn: str, started: list[subprocess.Popen[str]]) -> str:
    process = subprocess.Popen([sys.executable, "-c", RUN, dsn], stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ))
    started.append(process)
    assert process.stdout is not None
    prefix = process.stdout.readline().strip()
    assert prefix.startswith("pgqueue_bench_"), f"the run did not start (exit {process.poll()})"
    return prefix


def test_the_next_run_drops_the_databases_of_a_killed_run_and_keeps_a_live_runs(
        pg_server_dsn: str, run: list[subprocess.Popen[str]]) -> None:
    killed = start_run(pg_server_dsn, run)
    alive = start_run(pg_server_dsn, run)
    assert names(pg_server_dsn, killed) == [killed, f"{killed}_1"]
    run[0].send_signal(signal.SIGKILL)
    run[0].wait(30)
    # Killed: nothing of the run dropped its databases.
    assert names(pg_server_dsn, killed) == [killed, f"{killed}_1"]

    later = ScratchDatabases(pg_server_dsn)
    later.create_template()
    try:
        assert sorted(later.swept) == [killed, f"{killed}_1"]
        assert names(pg_server_dsn, killed) == []
        # The live run's databases are untouched, idle as it is.
        assert names(pg_server_dsn, alive) == [alive, f"{alive}_1"]
        assert names(pg_server_dsn, later.prefix) == [later.prefix]
    finally:
        later.drop_all()
    assert names(pg_server_dsn, later.prefix) == []
