"""`pgqueue demo`, the newcomer's first command, run as a user would."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from pgqueue._db.databases import with_database
from tests.helpers import admin_connection, wait_until
from tests.plugins.processes import RunCli, SpawnPgqueue


@pytest.fixture
def demo_database(pg_server_dsn: str) -> Iterator[str]:
    name = f"pgq_demo_{uuid.uuid4().hex[:10]}"
    yield name
    with admin_connection(pg_server_dsn) as admin:
        admin.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(name)))


def test_demo_runs_the_whole_system_and_exits_zero(pg_server_dsn: str, demo_database: str) -> None:
    env = dict(os.environ)
    command = ["pgqueue", "demo", "--database", demo_database, "--timeout", "90"]
    if os.environ.get("PGQUEUE_TEST_DSN"):
        command += ["--dsn", pg_server_dsn]
    # else: no DSN at all, exactly as on a fresh machine: the embedded server (PGQUEUE_HOME is the
    # test home, set by conftest) is found or started by pgqueue itself.
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "summary" in result.stdout
    if not os.environ.get("PGQUEUE_TEST_DSN"):
        assert "embedded PostgreSQL server" in result.stderr

    with psycopg.connect(with_database(pg_server_dsn, demo_database)) as conn:
        def scalar(query: str) -> int:
            row = conn.execute(query).fetchone()
            assert row is not None
            return int(row[0])

        rows = conn.execute("SELECT state, count(*) FROM pgqueue.jobs GROUP BY state").fetchall()
        states: dict[str, int] = dict(rows)
        retried = scalar("SELECT count(*) FROM pgqueue.job_events WHERE event = 'retry_scheduled'")
        delayed = scalar("SELECT count(*) FROM pgqueue.job_events WHERE event = 'available'")
        cron_runs = scalar("SELECT count(*) FROM pgqueue.schedule_runs WHERE schedule_name = 'appointment-sweep'")
        progress = scalar("SELECT count(*) FROM pgqueue.jobs WHERE task = 'render-report' AND progress = 100")
    # Every job reached a terminal state; some failed for good, some were retried, some delayed.
    assert set(states) <= {"completed", "failed"}, states
    assert states["completed"] > 200
    assert states.get("failed", 0) >= 1
    assert retried > 0
    assert delayed > 0
    assert progress == 30
    assert cron_runs >= 1  # the scheduler ran beside the worker


def test_a_second_demo_on_the_same_database_is_refused_and_leaves_the_running_one_alone(
        pg_server_dsn: str, demo_database: str, spawn_pgqueue: SpawnPgqueue, run_cli: RunCli) -> None:
    first = spawn_pgqueue("demo", "--database", demo_database, "--keep-running", "--timeout", "90",
                          dsn=pg_server_dsn)
    demo_dsn = with_database(pg_server_dsn, demo_database)

    def database_oid() -> int | None:
        with admin_connection(pg_server_dsn) as admin:
            row = admin.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s",
                                [demo_database]).fetchone()
        return None if row is None else int(row[0])

    def jobs() -> int:
        try:
            with psycopg.connect(demo_dsn) as conn:
                row = conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone()
        except psycopg.Error:  # not created or not migrated yet
            return 0
        return int(row[0]) if row else 0

    wait_until(lambda: jobs() > 0, timeout=60, message="the first demo enqueued its jobs")
    oid = database_oid()

    second = run_cli(["demo", "--database", demo_database, "--timeout", "30"], dsn=pg_server_dsn)
    assert second.returncode == 1, second.stderr[-3000:]
    assert second.stderr.splitlines()[-1].startswith(
        f"pgqueue: error: a demo is already running on database '{demo_database}' (server pid "), second.stderr
    assert "Traceback" not in second.stderr
    # Untouched: the same database (not dropped and recreated), and the first demo runs on to its end.
    assert database_oid() == oid
    assert first.alive(), first.describe()
    wait_until(lambda: "a fresh batch every 20 s" in first.stderr(), timeout=90,
               message="the first demo finished its batch")
    first.send(signal.SIGINT)
    assert first.wait(timeout=30) == 0, first.describe()
    assert database_oid() == oid

    # Once it has ended, the database is free for the next demo (the mark ended with its session).
    again = run_cli(["demo", "--database", demo_database, "--timeout", "90"], dsn=pg_server_dsn)
    assert again.returncode == 0, again.stderr[-3000:]
