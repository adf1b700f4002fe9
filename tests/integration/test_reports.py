"""The ready reports of sql/reports/ on a real database: what each one counts, and that the files
people read are the very files pgqueue runs (the dashboard's charts among them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

from pgqueue import App, admin
from tests.helpers import REPO_ROOT

Conn = psycopg.Connection[TupleRow]
PACKAGED = REPO_ROOT / "pgqueue" / "_db" / "queries" / "reports"


@pytest.fixture
def db(dsn: str) -> Iterator[Conn]:
    with psycopg.connect(dsn) as conn:
        yield conn


def add(conn: Conn, *, queue: str = "emails", task: str = "send", state: str = "completed", ago: str = "10 minutes",
        run: str = "2 seconds", error: str | None = None, encrypted: bool = False) -> int:
    job_id = App().enqueue(conn, task, {}, queue=queue)
    conn.execute("""UPDATE pgqueue.jobs SET state = %(state)s, attempt = 1,
                    started_at = CASE WHEN %(state)s <> 'available'
                                      THEN now() - %(ago)s::interval - %(run)s::interval END,
                    finished_at = CASE WHEN %(state)s IN ('completed', 'failed', 'cancelled')
                                       THEN now() - %(ago)s::interval END,
                    run_at = now() - %(ago)s::interval,
                    last_error = %(error)s::jsonb,
                    error_encrypted = CASE WHEN %(encrypted)s THEN '\\x00'::bytea END
                    WHERE id = %(id)s""",
                 {"state": state, "ago": ago, "run": run, "id": job_id, "encrypted": encrypted,
                  "error": None if error is None else f'{{"type": "Boom", "message": "{error}"}}'})
    return job_id


def test_the_files_for_people_are_the_files_pgqueue_runs() -> None:
    people = {path.name: path.read_text() for path in (REPO_ROOT / "sql" / "reports").glob("*.sql")}
    packaged = {path.name: path.read_text() for path in PACKAGED.glob("*.sql")}

    assert people == packaged
    assert set(people) == {"throughput.sql", "failure_rate.sql", "run_times.sql", "queue_lag.sql",
                           "dead_letters.sql"}


def test_the_report_files_run_as_plain_sql_in_any_client(db: Conn) -> None:
    add(db)
    for path in sorted(PACKAGED.glob("*.sql")):
        db.execute(Path(path).read_text(), prepare=False)  # no placeholders: psql and BI tools run them as is


def test_throughput_counts_finished_jobs_per_queue_and_bucket_within_the_window(db: Conn) -> None:
    for _ in range(3):
        add(db, ago="10 minutes")
    add(db, state="failed", ago="10 minutes")
    add(db, queue="reports", ago="2 hours")
    add(db, ago="3 days")  # outside the default day
    add(db, state="available")

    day = admin.report(db, "throughput")
    hour = admin.report(db, "throughput", window="1 hour", bucket="5 minutes")

    def totals(rows: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
        result: dict[str, tuple[int, int]] = {}
        for row in rows:
            done, failed = result.get(row["queue"], (0, 0))
            result[row["queue"]] = (done + row["completed"], failed + row["failed"])
        return result

    assert totals(day) == {"emails": (3, 1), "reports": (1, 0)}
    assert totals(hour) == {"emails": (3, 1)}
    assert all(row["bucket_start"].minute % 5 == 0 and row["bucket_start"].second == 0 for row in hour)
    # The settings were local to the report: the caller's session is as it was.
    assert db.execute("SELECT current_setting('pgqueue.report_window', true)").fetchone() in (("",), (None,))


def test_failure_rate_is_the_share_of_ended_jobs_that_failed_per_task_and_day(db: Conn) -> None:
    for _ in range(3):
        add(db, task="sync")
    add(db, task="sync", state="failed")
    add(db, task="sync", state="cancelled")  # not counted
    add(db, task="ok")

    rows = {row["task"]: row for row in admin.report(db, "failure_rate")}

    assert (rows["sync"]["finished"], rows["sync"]["failed"], float(rows["sync"]["failure_rate"])) == (4, 1, 0.25)
    assert float(rows["ok"]["failure_rate"]) == 0.0


def test_run_times_report_p50_and_p95_per_task(db: Conn) -> None:
    for seconds in range(1, 11):
        add(db, task="render", run=f"{seconds} seconds")
    add(db, task="render", state="failed", run="100 seconds")  # failed: not a run time of success

    [row] = admin.report(db, "run_times")

    assert row["task"] == "render"
    assert row["jobs"] == 10
    assert row["p50_seconds"] == pytest.approx(5.5)
    assert row["p95_seconds"] == pytest.approx(9.55)
    assert row["max_seconds"] == pytest.approx(10)


def test_queue_lag_counts_live_and_dead_jobs_and_the_oldest_available_wait(db: Conn) -> None:
    add(db, state="available", ago="90 seconds")
    add(db, state="available", ago="5 seconds")
    add(db, state="failed")
    add(db, queue="done-long-ago", ago="2 days")  # only completed jobs: not a live queue
    admin.pause_queue(db, "configured", create=True)  # a settings row and no job

    rows = {row["queue"]: row for row in admin.report(db, "queue_lag")}

    assert set(rows) == {"emails", "configured"}
    assert (rows["emails"]["available"], rows["emails"]["failed"]) == (2, 1)
    assert 89 <= rows["emails"]["lag_seconds"] < 150
    assert (rows["configured"]["paused"], rows["configured"]["lag_seconds"]) == (True, None)


def test_dead_letters_list_failed_jobs_with_their_error_and_hide_encrypted_messages(db: Conn) -> None:
    plain = add(db, state="failed", error="smtp said no")
    sealed = add(db, state="failed", error="ciphertext-ish", encrypted=True)
    add(db)

    rows = admin.report(db, "dead_letters")

    assert [(r["id"], r["error_type"], r["error_message"]) for r in rows] == [
        (sealed, "Boom", "(encrypted)"), (plain, "Boom", "smtp said no")]
