"""`pgqueue demo`, the newcomer's first command, run as a user would."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from pgqueue._db.databases import with_database
from tests.helpers import admin_connection


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
