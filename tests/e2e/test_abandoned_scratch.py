"""A run killed outright (SIGKILL) cannot drop its scratch databases; the next run on the server
drops them, and never those of a run that is still going, however idle: `pgqueue bench`'s
databases, and those ``pgqueue.testing`` makes for an application's tests.

Real processes: each run is a Python process that creates its databases, reports them, then
waits; one is SIGKILLed, the other kept alive.
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

BENCH_RUN = """
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


# pgqueue.testing's databases: its run starts with the process's first fresh_database.
TEST_FAMILY = "pgqueue_test_"
TEST_RUN = """
import sys, time
from pgqueue.testing import fresh_database
from pgqueue.testing._database import _scratch_run
server = sys.argv[1]
with fresh_database(server):
    run = _scratch_run(server)
    print(run.name, *sorted(run.swept), flush=True)
    if sys.argv[2] == "wait":
        time.sleep(600)
"""


@pytest.fixture
def run(pg_server_dsn: str) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(30)
    # Killed too, the live runs left their databases: the sweep under test drops them.
    drop_abandoned_runs(pg_server_dsn, FAMILY)
    drop_abandoned_runs(pg_server_dsn, TEST_FAMILY)


def start_run(dsn: str, started: list[subprocess.Popen[str]], script: str = BENCH_RUN, *args: str) -> str:
    """Start a run; return the first line it prints."""
    process = subprocess.Popen([sys.executable, "-c", script, dsn, *args], stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ))
    started.append(process)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line, f"the run did not start (exit {process.poll()})"
    return line


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
        # (With any other killed run's, on a shared server.)
        assert {killed, f"{killed}_1"} <= set(later.swept)
        assert not [name for name in later.swept if name.startswith(alive)]
        assert names(pg_server_dsn, killed) == []
        # The live run's databases are untouched, idle as it is.
        assert names(pg_server_dsn, alive) == [alive, f"{alive}_1"]
        assert names(pg_server_dsn, later.prefix) == [later.prefix]
    finally:
        later.drop_all()
    assert names(pg_server_dsn, later.prefix) == []


def test_an_application_test_run_drops_the_test_databases_of_a_killed_one(
        pg_server_dsn: str, run: list[subprocess.Popen[str]]) -> None:
    killed = start_run(pg_server_dsn, run, TEST_RUN, "wait").split()[0]
    alive = start_run(pg_server_dsn, run, TEST_RUN, "wait").split()[0]
    assert len(names(pg_server_dsn, killed)) == 1
    run[0].send_signal(signal.SIGKILL)
    run[0].wait(30)
    assert len(names(pg_server_dsn, killed)) == 1

    later, *swept = start_run(pg_server_dsn, run, TEST_RUN, "done").split()
    run[2].wait(30)

    assert later.startswith(TEST_FAMILY)
    assert [name for name in swept if name.startswith(killed)] != []
    assert not [name for name in swept if name.startswith(alive)]
    assert names(pg_server_dsn, killed) == []
    assert len(names(pg_server_dsn, alive)) == 1
    assert names(pg_server_dsn, later) == []  # its own database, dropped as the block ended
