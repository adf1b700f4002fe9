"""`pgqueue prune` end to end: the installed executable against a real database."""

from __future__ import annotations

import json
import subprocess

import psycopg
import pytest
from psycopg.rows import TupleRow

from tests.e2e.test_cli import ACTOR, PGQUEUE, _env, ok, ok_json, run

Conn = psycopg.Connection[TupleRow]


def add_jobs(conn: Conn, state: str, count: int, finished_ago: str) -> None:
    conn.execute("""
        INSERT INTO pgqueue.jobs (task, state, finished_at)
        SELECT 't', %s, now() - %s::interval FROM generate_series(1, %s)""", [state, finished_ago, count])
    conn.commit()


def counts(conn: Conn) -> dict[str, int]:
    rows = conn.execute("SELECT state, count(*) FROM pgqueue.jobs GROUP BY state").fetchall()
    conn.commit()
    return {state: int(n) for state, n in rows}


def test_prune_dry_run_counts_then_prune_deletes_and_records_one_audit_row(dsn: str, conn: Conn) -> None:
    add_jobs(conn, "completed", 7, "2 days")
    add_jobs(conn, "completed", 2, "1 hour")
    add_jobs(conn, "failed", 3, "8 days")
    add_jobs(conn, "cancelled", 1, "8 days")
    add_jobs(conn, "failed", 4, "2 days")
    add_jobs(conn, "available", 2, "30 days")

    dry = ok_json(dsn, "prune", "--dry-run")
    assert (dry["completed"], dry["failed"], dry["cancelled"], dry["dry_run"]) == (7, 3, 1, True)
    assert counts(conn) == {"completed": 9, "failed": 7, "cancelled": 1, "available": 2}

    table = ok(dsn, "prune", "--dry-run", "--completed-older-than", "30m")
    assert "would delete 13 rows (dry run: nothing was deleted)" in table
    assert "completed jobs      9" in table

    report = ok_json(dsn, "prune", "--completed-older-than", "1d", "--failed-older-than", "never")
    assert (report["completed"], report["failed"], report["cancelled"], report["dry_run"]) == (7, 0, 0, False)
    assert report["failed_before"] is None
    assert counts(conn) == {"completed": 2, "failed": 7, "cancelled": 1, "available": 2}

    table = ok(dsn, "prune")  # the defaults: failed and cancelled after 7 days
    assert "deleted 4 rows" in table
    assert counts(conn) == {"completed": 2, "failed": 4, "available": 2}

    events = conn.execute("SELECT job_id, actor, detail ->> 'completed', detail ->> 'failed', detail ->> 'source' "
                          "FROM pgqueue.job_events WHERE event = 'pruned' ORDER BY id").fetchall()
    assert events == [(None, ACTOR, "7", "0", "cli"), (None, ACTOR, "0", "3", "cli")]


def assert_usage_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [expected]


def test_the_environment_sets_the_defaults_and_a_bad_value_is_named(dsn: str, conn: Conn) -> None:
    add_jobs(conn, "completed", 2, "2 hours")
    assert ok_json(dsn, "prune")["completed"] == 0  # the default, 1 day, keeps them
    env = {**_env(dsn), "PGQUEUE_RETAIN_COMPLETED": "1h"}

    done = subprocess.run([PGQUEUE, "prune", "--json"], env=env, capture_output=True, text=True, timeout=60,
                          check=False)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["completed"] == 2
    env["PGQUEUE_RETAIN_FAILED"] = "a week"
    bad = subprocess.run([PGQUEUE, "prune"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert_usage_error(bad, "pgqueue: error: PGQUEUE_RETAIN_FAILED 'a week' must be a duration such as 90, "
                            "90s, 15m, 12h, 1d, 2w, or 'never'")


@pytest.mark.parametrize(("duration", "message"), [
    ("3 days", "must be a duration such as 90, 90s, 15m, 12h, 1d, 2w, or 'never'"),
    # It used to reach PostgreSQL, whose timestamps overflow: "unexpected DatetimeFieldOverflow (a bug in pgqueue)".
    ("99999999w", "is longer than 100 years: use 'never' to keep them forever"),
])
def test_a_bad_duration_is_one_line_and_exit_2_and_deletes_nothing(dsn: str, conn: Conn, duration: str,
                                                                  message: str) -> None:
    add_jobs(conn, "completed", 1, "400 days")

    result = run(dsn, "prune", "--completed-older-than", duration)

    assert_usage_error(result, f"pgqueue: error: --completed-older-than {duration!r} {message}")
    assert counts(conn) == {"completed": 1}


def test_prune_from_cron_writes_nothing_to_stderr(dsn: str, conn: Conn) -> None:
    add_jobs(conn, "completed", 1, "2 days")

    result = run(dsn, "prune")  # stderr is a pipe, as under cron (which mails any output)

    assert result.returncode == 0, result.stderr
    assert "deleted 1 rows" in result.stdout
    assert result.stderr == ""  # the progress bar, off a terminal, used to leave an empty line
