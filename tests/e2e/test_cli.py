"""The operator CLI end to end: the installed ``pgqueue`` executable against a real database.

Every call goes through :func:`run`, which also checks that no traceback ever reaches stderr.
CLI start-up costs most of a second, so each test makes a handful of calls on one database and
checks the rest with SQL; the error cases share one database for the module.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

from pgqueue import App, Job, Worker
from pgqueue._crypto import generate_key
from tests.helpers import scratch_database, wait_until

_NEXT_TO_PYTHON = Path(sys.executable).with_name("pgqueue")
# The script next to this interpreter skips version-manager shims (pyenv adds ~0.3 s per call).
PGQUEUE = str(_NEXT_TO_PYTHON) if _NEXT_TO_PYTHON.exists() else (shutil.which("pgqueue") or "pgqueue")
ACTOR = getpass.getuser()  # the OS user; where from is the detail's source
Conn = psycopg.Connection[TupleRow]


def _env(dsn: str | None) -> dict[str, str]:
    env = {**os.environ, "PGQUEUE_EMBEDDED": "0"}  # a misconfigured test must never start a server
    env.pop("COLUMNS", None)  # tables are laid out for a pipe, whatever the terminal running pytest
    env.pop("DATABASE_URL", None)
    if dsn is not None:
        env["PGQUEUE_DSN"] = dsn
    return env


def run(dsn: str | None, *args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([PGQUEUE, *args], env=_env(dsn), stdin=stdin, capture_output=True, text=True,
                            timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def ok(dsn: str, *args: str) -> str:
    result = run(dsn, *args)
    assert result.returncode == 0, f"pgqueue {' '.join(args)} exited {result.returncode}: {result.stderr}"
    return result.stdout


def ok_json(dsn: str, *args: str) -> Any:
    return json.loads(ok(dsn, *args, "--json"))


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pgqueue: error: "), lines[0]
    assert expected in lines[0], lines[0]


def enqueue(conn: Conn, task: str = "t", queue: str = "default", state: str | None = None, **options: Any) -> int:
    """A committed job, optionally forced into ``state`` as a worker would have left it."""
    job_id = App().enqueue(conn, task, {"n": 1}, queue=queue, **options)
    if state is not None:
        conn.execute(
            """UPDATE pgqueue.jobs SET state = %(state)s, attempt = 1,
                      worker_id = CASE WHEN %(state)s = 'running' THEN 'w-test' END,
                      lease_token = CASE WHEN %(state)s = 'running' THEN gen_random_uuid() END,
                      finished_at = CASE WHEN %(state)s IN ('completed', 'failed', 'cancelled') THEN now() END
               WHERE id = %(id)s""", {"state": state, "id": job_id})
    conn.commit()
    return job_id


def audit(conn: Conn, job_id: int | None, event: str) -> list[tuple[Any, ...]]:
    """(actor, detail) of the audit rows for ``event``, of a job or of queue actions (job_id NULL)."""
    rows = conn.execute(
        "SELECT actor, detail FROM pgqueue.job_events WHERE job_id IS NOT DISTINCT FROM %s AND event = %s ORDER BY id",
        [job_id, event]).fetchall()
    conn.rollback()
    return rows


def job_state(conn: Conn, job_id: int) -> str | None:
    row = conn.execute("SELECT state FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone()
    conn.rollback()
    return row[0] if row else None


def add_live_worker(conn: Conn, queues: list[str]) -> None:
    conn.execute("INSERT INTO pgqueue.workers (id, hostname, pid, queues, concurrency, lease_expires_at) "
                 "VALUES ('w-test', 'test-host', 4242, %s, 4, now() + interval '5 minutes')", [queues])
    conn.commit()


# --- enqueue ---


def test_enqueue_prints_the_new_jobs_id_and_stores_every_option(dsn: str, conn: Conn) -> None:
    out = ok(dsn, "enqueue", "send-email", "--args", '{"to": "a@example.com", "n": [1, 2]}', "--queue", "emails",
             "--priority", "high", "--run-at", "2030-01-02T03:04:05+02:00", "--max-attempts", "3",
             "--unique-key", "welcome-42", "--tag", "billing", "--tag", "facility:001")
    second = ok_json(dsn, "enqueue", "render-report", "--priority", "7", "--delay", "3600")

    job_id = int(out.strip())
    row = conn.execute("SELECT task, queue, state, priority, args, max_attempts, run_at, unique_key, tags "
                       "FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None
    task, queue, state, priority, args, max_attempts, run_at, unique_key, tags = row
    assert (task, queue, state, priority, max_attempts) == ("send-email", "emails", "scheduled", 25, 3)
    assert args == {"to": "a@example.com", "n": [1, 2]}
    assert run_at.isoformat().startswith("2030-01-02T01:04:05")
    assert (unique_key, tags) == ("welcome-42", ["billing", "facility:001"])
    assert set(second) == {"id"}
    delayed = conn.execute("SELECT state, priority, run_at - enqueued_at > interval '59 minutes' FROM pgqueue.jobs "
                           "WHERE id = %s", [second["id"]]).fetchone()
    assert delayed == ("scheduled", 7, True)


def test_the_settings_without_a_command_of_their_own_have_root_options(dsn: str, conn: Conn,
                                                                      tmp_path: Path) -> None:
    """Contract §2b: PGQUEUE_HOME and PGQUEUE_ENCRYPT_ALL have CLI options, which win over the variables."""
    def call(*args: str, **env: str) -> str:
        result = subprocess.run([PGQUEUE, *args], env={**_env(dsn), **env}, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=60)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode == 0, result.stderr
        return result.stdout

    key = generate_key()
    sealed = int(call("--encrypt-all", "enqueue", "t", "--args", '{"ssn": "1"}', PGQUEUE_ENCRYPTION_KEYS=key))
    plain = int(call("--no-encrypt-all", "enqueue", "t", "--args", '{"a": 2}', PGQUEUE_ENCRYPTION_KEYS=key,
                     PGQUEUE_ENCRYPT_ALL="1"))
    rows: dict[int, bool] = dict(conn.execute(
        "SELECT id, (args IS NULL AND args_encrypted IS NOT NULL) FROM pgqueue.jobs WHERE id = ANY(%s)",
        [[sealed, plain]]).fetchall())
    assert rows == {sealed: True, plain: False}

    home = tmp_path / "elsewhere"
    status = json.loads(call("--home", str(home), "embedded", "status", "--json", PGQUEUE_HOME="/nonexistent"))
    assert (status["home"], status["running"]) == (str(home), False)
    assert not home.exists()  # status only looks


def test_enqueue_encrypts_a_task_its_workers_declare_encrypt_true_without_being_told(dsn: str, conn: Conn) -> None:
    """Contract §8: the CLI loads no application, so it learns encrypt=True from pgqueue.encrypted_tasks."""
    workers_code = App(dsn)

    @workers_code.task(name="verify-ssn", encrypt=True)
    def verify_ssn(job: Job, ssn: str) -> None: ...

    assert Worker(workers_code, concurrency=1).run_until_empty() == 0  # its start records the task

    def call(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in _env(dsn).items() if k not in ("PGQUEUE_ENCRYPTION_KEYS", "PGQUEUE_ENCRYPT_ALL")}
        result = subprocess.run([PGQUEUE, *args], env={**base, **env}, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=60)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    refused = call("enqueue", "verify-ssn", "--args", '{"ssn": "123-45-6789"}')
    assert_one_line_error(refused, "PGQUEUE_ENCRYPTION_KEYS is not set")
    assert "'verify-ssn' is declared encrypt=True by its workers" in refused.stderr
    assert conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM pgqueue.job_events").fetchone() == (0,)

    key = generate_key()
    sealed = call("enqueue", "verify-ssn", "--args", '{"ssn": "123-45-6789"}', PGQUEUE_ENCRYPTION_KEYS=key)
    plain = call("enqueue", "send-email", "--args", '{"to": "a@example.com"}', PGQUEUE_ENCRYPTION_KEYS=key)
    assert (sealed.returncode, plain.returncode) == (0, 0), (sealed.stderr, plain.stderr)
    rows: dict[int, bool] = dict(
        conn.execute("SELECT id, (args IS NULL AND args_encrypted IS NOT NULL) FROM pgqueue.jobs").fetchall())
    assert rows == {int(sealed.stdout): True, int(plain.stdout): False}
    assert "123-45-6789" not in str(conn.execute("SELECT j::text FROM pgqueue.jobs AS j").fetchall())


# --- jobs ---


def test_jobs_list_and_show_print_tables_for_people_and_every_column_as_json(dsn: str, conn: Conn) -> None:
    job_id = enqueue(conn, "send-email", "emails", tags=["billing"], group="patient:42")
    enqueue(conn, "other", "reports")
    conn.execute("""UPDATE pgqueue.jobs SET state = 'failed', attempt = 2, max_attempts = 2, progress = 40,
                    progress_note = 'page 2', finished_at = now(),
                    last_error = '{"type": "ValueError", "message": "bad [input]", "traceback": "Traceback ..."}'
                    WHERE id = %s""", [job_id])
    conn.commit()

    table = ok(dsn, "jobs", "list", "--queue", "emails")
    listed = ok_json(dsn, "jobs", "list", "--state", "failed", "--limit", "5")
    shown = ok(dsn, "jobs", "show", str(job_id))
    detail = ok_json(dsn, "jobs", "show", str(job_id))

    header = table.splitlines()[0].split()
    assert header[:5] == ["ID", "TASK", "QUEUE", "STATE", "PRIORITY"]
    assert "send-email" in table
    assert "other" not in table
    assert [j["id"] for j in listed] == [job_id]
    assert {"id", "task", "queue", "state", "priority", "args", "attempt", "max_attempts", "run_at", "enqueued_at",
            "started_at", "finished_at", "progress", "progress_note", "result", "last_error", "unique_key", "tags",
            "worker_id"} <= set(listed[0])
    assert "ValueError: bad [input]" in shown  # printed as text, not eaten as rich markup
    assert "40% (page 2)" in shown
    assert "audit trail (1 event)" in shown
    assert "last error traceback:" in shown
    assert detail["state"] == "failed"
    assert detail["last_error"]["type"] == "ValueError"
    assert (detail["progress"], detail["progress_note"], detail["tags"]) == (40, "page 2", ["billing"])
    assert (detail["group_key"], listed[0]["group_key"]) == ("patient:42", "patient:42")
    assert "patient:42" in shown
    assert detail["enqueued_at"].endswith("+00:00")  # ISO 8601 with its offset
    assert [e["event"] for e in detail["events"]] == ["enqueued"]


def test_jobs_retry_cancel_and_delete_change_state_and_write_audit_rows_with_the_cli_actor(
        dsn: str, conn: Conn) -> None:
    failed = enqueue(conn, queue="a", state="failed")
    failed_a = enqueue(conn, queue="a", state="failed")
    failed_b = enqueue(conn, queue="b", state="failed")
    running = enqueue(conn, queue="a", state="running")
    completed = enqueue(conn, queue="a", state="completed")

    retried = ok(dsn, "jobs", "retry", str(failed))
    bulk = ok_json(dsn, "jobs", "retry", "--failed", "--queue", "a")
    cancelled = ok(dsn, "jobs", "cancel", str(running))
    deleted = ok_json(dsn, "jobs", "delete", str(completed))

    assert f"retried job {failed}" in retried
    assert bulk == {"retried": [failed_a], "count": 1, "skipped": [], "skipped_count": 0}
    assert f"cancelled job {running} (was running)" in cancelled
    assert deleted == {"id": completed, "deleted": True}
    assert [job_state(conn, j) for j in (failed, failed_a, failed_b, running, completed)] == [
        "available", "available", "failed", "cancelled", None]
    assert audit(conn, failed, "retried") == [(ACTOR, {"source": "cli"})]
    assert audit(conn, failed_a, "retried") == [(ACTOR, {"source": "cli"})]
    assert audit(conn, running, "cancelled") == [(ACTOR, {"source": "cli"})]
    assert audit(conn, completed, "deleted") == [(ACTOR, {"source": "cli"})]


def test_jobs_retry_failed_reports_the_failed_jobs_a_live_unique_key_leaves_behind(dsn: str, conn: Conn) -> None:
    held = enqueue(conn, queue="u", state="failed", unique_key="report-7")
    enqueue(conn, queue="u", unique_key="report-7")  # a live job took the key once the first was dead
    free = enqueue(conn, queue="u", state="failed")

    table = ok(dsn, "jobs", "retry", "--failed", "--queue", "u")
    held_again = ok_json(dsn, "jobs", "retry", "--failed", "--queue", "u")

    assert table.strip() == (f"retried 1 failed job in queue 'u'; left 1 failed (id {held}): a live job holds "
                             "their unique_key, retry them once it is done")
    assert held_again == {"retried": [], "count": 0, "skipped": [held], "skipped_count": 1}
    assert (job_state(conn, held), job_state(conn, free)) == ("failed", "available")


# --- queues ---


def test_queues_list_pause_resume_and_purge_with_audit_rows(dsn: str, conn: Conn) -> None:
    failed = enqueue(conn, queue="emails", state="failed")
    completed = enqueue(conn, queue="emails", state="completed")
    running = enqueue(conn, queue="emails", state="running")

    ok(dsn, "queues", "pause", "emails")
    paused = ok_json(dsn, "queues", "list")
    ok(dsn, "queues", "resume", "emails")
    table = ok(dsn, "queues", "list")
    unconfirmed = run(dsn, "queues", "purge", "emails")  # stdin is not a terminal and no --yes
    purged_failed = ok_json(dsn, "queues", "purge", "emails", "--state", "failed", "--yes")
    purged_rest = ok(dsn, "queues", "purge", "emails", "--yes")

    assert paused == [{"name": "emails", "paused": True, "scheduled": 0, "available": 0, "running": 1,
                       "failed": 1, "cancelled": 0, "completed_last_hour": 1, "failed_last_hour": 1,
                       "lag_seconds": None, "concurrency": None, "rate": None, "rate_limit": None,
                       "rate_period_seconds": None, "starts_in_window": None, "waiting": 0}]
    assert table.splitlines()[0].split()[:3] == ["QUEUE", "PAUSED", "WAITING"]
    assert "emails" in table
    assert_one_line_error(unconfirmed, "stdin is not a terminal; pass --yes")
    assert purged_failed == {"queue": "emails", "state": "failed", "purged": 1}
    assert "purged 1 jobs from queue 'emails'" in purged_rest
    assert [job_state(conn, j) for j in (failed, completed, running)] == [None, None, "running"]
    assert audit(conn, None, "queue_paused") == [(ACTOR, {"queue": "emails", "source": "cli"})]
    assert audit(conn, None, "queue_resumed") == [(ACTOR, {"queue": "emails", "source": "cli"})]
    assert audit(conn, failed, "purged") == [(ACTOR, {"queue": "emails", "source": "cli"})]
    assert audit(conn, completed, "purged") == [(ACTOR, {"queue": "emails", "source": "cli"})]


def _purge_on_a_terminal(dsn: str, answer: str) -> subprocess.CompletedProcess[str]:
    controller, terminal = os.openpty()
    try:
        os.write(controller, answer.encode())  # typed ahead; the prompt reads it from the terminal
        return run(dsn, "queues", "purge", "emails", stdin=terminal)
    finally:
        os.close(controller)
        os.close(terminal)


def test_queues_purge_on_a_terminal_deletes_only_after_the_operator_says_yes(dsn: str, conn: Conn) -> None:
    job_id = enqueue(conn, queue="emails", state="failed")

    refused = _purge_on_a_terminal(dsn, "n\n")
    assert job_state(conn, job_id) == "failed"
    accepted = _purge_on_a_terminal(dsn, "y\n")

    assert "Delete 1 jobs from queue 'emails'" in refused.stderr
    assert refused.returncode == 1
    assert "purge cancelled; nothing was deleted" in refused.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert "purged 1 jobs from queue 'emails'" in accepted.stdout
    assert job_state(conn, job_id) is None


# --- schedules ---


def test_schedules_list_prints_each_next_fire_time_on_its_own_line(dsn: str) -> None:
    ok(dsn, "schedules", "add", "daily", "--cron", "0 0 9 * * *", "--task", "t")  # 6 fields: seconds first

    table = ok(dsn, "schedules", "list")
    fire_times = ok_json(dsn, "schedules", "list")[0]["next_fire_times"]

    assert "\\x0a" not in table  # the newlines between the times were shown escaped
    lines = [line.strip() for line in table.splitlines()]
    for fire_time in fire_times:  # each on a line of its own, the first after the row's other cells
        assert any(line.endswith(fire_time.replace("T", " ")) for line in lines), (fire_time, table)
    assert sum(1 for line in lines if re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00", line)) == 2


# --- stats and health ---


def test_stats_shows_counts_per_queue_and_state_totals_workers_and_notification_queue_usage(
        dsn: str, conn: Conn) -> None:
    enqueue(conn, queue="emails")
    enqueue(conn, queue="emails", state="failed")
    enqueue(conn, queue="reports", state="completed")
    add_live_worker(conn, ["emails"])

    text = ok(dsn, "stats")
    data = ok_json(dsn, "stats")

    assert "jobs per queue and state" in text
    assert "total" in text
    assert "workers (1 live)" in text
    assert "test-host" in text
    assert re.search(r"notification queue usage: \d+\.\d%", text)  # server-wide, so not necessarily 0
    assert "NOTIFY is transactional" in text
    assert [(q["name"], q["available"], q["failed"], q["completed_last_hour"]) for q in data["queues"]] == [
        ("emails", 1, 1, 0), ("reports", 0, 0, 1)]
    assert data["totals"] == {"waiting": 0, "scheduled": 0, "available": 1, "running": 0, "failed": 1, "cancelled": 0,
                              "completed_last_hour": 1, "failed_last_hour": 1,
                              "lag_seconds": data["queues"][0]["lag_seconds"]}
    assert [(w["id"], w["alive"], w["queues"]) for w in data["workers"]] == [("w-test", True, ["emails"])]
    assert data["live_workers"] == 1
    assert 0.0 <= data["notification_queue_usage"] < 0.5
    assert "COMMIT" in data["notification_queue_note"]


def test_health_fails_with_exit_2_while_an_old_backlog_has_no_live_worker_and_passes_once_one_serves_it(
        dsn: str, conn: Conn) -> None:
    job_id = enqueue(conn, queue="emails")
    conn.execute("UPDATE pgqueue.jobs SET run_at = now() - interval '10 minutes' WHERE id = %s", [job_id])
    conn.commit()

    stranded = run(dsn, "health", "--max-age", "60")
    add_live_worker(conn, [])  # serves every queue
    healthy = run(dsn, "health", "--json")

    assert stranded.returncode == 2, stranded.stderr
    lines = stranded.stdout.splitlines()
    assert lines[0].startswith("ok    database: reachable at")
    assert lines[1] == "ok    schema: at head, no pending migrations"
    assert lines[2].startswith("FAIL  workers: ")
    assert "'emails'" in lines[2]
    assert lines[3].startswith("ok    notification_queue: ")
    assert lines[-1] == "unhealthy"
    assert healthy.returncode == 0, healthy.stdout
    report = json.loads(healthy.stdout)
    assert report["healthy"] is True
    assert [(c["name"], c["status"]) for c in report["checks"]] == [
        ("database", "ok"), ("schema", "ok"), ("workers", "ok"), ("notification_queue", "ok"),
        ("long_transactions", "ok"), ("circuit_breakers", "ok")]


def test_health_fails_when_the_schema_is_not_migrated(empty_dsn: str) -> None:
    result = run(empty_dsn, "health")

    assert result.returncode == 2
    assert "FAIL  schema: pending migrations: " in result.stdout
    assert "skip  workers: the pgqueue schema is missing" in result.stdout


def test_health_fails_without_a_traceback_or_the_password_when_the_database_is_unreachable() -> None:
    result = run("postgresql://root:s3cret-pw@127.0.0.1:1/postgres", "health")

    assert result.returncode == 2
    assert "FAIL  database: cannot connect to postgresql://root:***@127.0.0.1:1/postgres" in result.stdout
    assert "s3cret-pw" not in result.stdout + result.stderr


# --- user errors: one line on stderr, exit 1, no traceback ---


@pytest.fixture(scope="module")
def error_db(pg_server_dsn: str, template_db: str) -> Iterator[tuple[str, dict[str, int]]]:
    """One database for the error cases (they change nothing): a completed and a running job."""
    with scratch_database(pg_server_dsn, template_db) as database_dsn, psycopg.connect(database_dsn) as conn:
        yield database_dsn, {"completed": enqueue(conn, state="completed"), "running": enqueue(conn, state="running")}


USER_ERRORS = [
    (["jobs", "show", "424242"], "job 424242 not found"),
    (["jobs", "retry", "424242"], "job 424242 not found"),
    (["jobs", "show", "abc"], "job id 'abc' must be a positive integer"),
    # isdigit() takes superscripts that int() then refuses: once "invalid literal for int()" and a file name.
    (["jobs", "show", "²"], "job id '²' must be a positive integer"),
    (["jobs", "cancel", "<completed>"],
     "job <completed> is completed; only waiting, scheduled, available or running jobs can be cancelled"),
    (["jobs", "delete", "<running>"], "job <running> is running; a running job cannot be deleted: cancel it first"),
    # An argument names something (a job, a queue, a schedule): a malformed one reads as not found.
    (["queues", "pause", "Bad Queue"], "queue name 'Bad Queue' must match"),
    (["schedules", "add", " padded", "--cron", "* * * * *", "--task", "t"], "schedule name ' padded' must be"),
]


@pytest.mark.parametrize(("argv", "message"), USER_ERRORS, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in
                                                                  enumerate(USER_ERRORS)])
def test_a_user_error_prints_one_line_and_exits_1(error_db: tuple[str, dict[str, int]], argv: list[str],
                                                  message: str) -> None:
    database_dsn, ids = error_db

    def fill(text: str) -> str:
        for name, job_id in ids.items():
            text = text.replace(f"<{name}>", str(job_id))
        return text

    result = run(database_dsn, *map(fill, argv))

    assert_one_line_error(result, fill(message))
    assert result.stdout == ""

# --- a bad option value: a usage error, one line on stderr, exit 2 (as click's own checks) --------

BAD_OPTION_VALUES = [
    # pgqueue worker: checked before the app is imported (nan once passed `<= 0` and ran a worker
    # whose leases overflowed).
    (["worker", "--app", "nowhere:app", "--lease-seconds", "nan"], "--lease-seconds nan must be greater than zero"),
    (["worker", "--app", "nowhere:app", "--poll-seconds", "0"], "--poll-seconds 0.0 must be greater than zero"),
    (["worker", "--app", "nowhere:app", "--shutdown-grace-seconds", "-1"],
     "--shutdown-grace-seconds -1.0 must be zero or more"),
    (["worker", "--app", "nowhere:app", "--queue", "Bad Queue"], "queue name 'Bad Queue' must match"),
    (["worker", "--app", "nowhere:app", "--queue", "emails=0"], "queue 'emails': slots 0 must be a whole number"),
    (["worker", "--app", "nowhere:app", "--prefetch", "lots"], "--prefetch 'lots' must be 'auto' or a whole number"),
    (["worker", "--app", "nowhere:app", "--metrics-port", "65535", "--processes", "2"],
     "--metrics-port 65535 with --processes 2 needs ports up to 65536"),
    (["worker", "--app", "nowhere:app", "--concurrency", "0"], "Invalid value for '--concurrency'"),  # click's own
    # A pass lands milliseconds after a fire time: with a grace of 0 every run counted as missed.
    (["scheduler", "--app", "nowhere:app", "--misfire-grace-seconds", "0"],
     "--misfire-grace-seconds 0 must be a number of seconds >= 1"),
    (["enqueue", "t", "--args", '{"to": oops}'], "--args is not valid JSON: Expecting value at line 1, column 8"),
    (["enqueue", "t", "--args", "[1, 2]"], "--args must be a JSON object"),
    (["enqueue", "t", "--priority", "urgent"], "priority 'urgent' must be an integer or one of critical, high"),
    (["enqueue", "t", "--queue", "Bad Queue"], "queue name 'Bad Queue' must match [a-z0-9_-]{1,63}"),
    (["enqueue", "t", "--run-at", "2030-01-01T09:00"], "needs a UTC offset"),
    (["enqueue", "t", "--run-at", "9999-01-01T00:00:00Z"], "run_at 9999-01-01T00:00:00+00:00 must be between"),
    (["enqueue", "t", "--delay", "-1"], "--delay -1 must be a number of seconds, 0 or more"),
    (["enqueue", "t", "--delay", "1", "--run-at", "2030-01-01T09:00Z"], "give --delay or --run-at, not both"),
    (["enqueue", "t", "--max-attempts", "0"], "max_attempts 0 must be an integer from 1 to 10000"),
    (["enqueue", "t", "--tag", ""], "tag '' must be a non-empty string"),
    (["enqueue", "t", "--group", ""], "group '' must be a non-empty string"),
    (["enqueue", "t", "--unique-key", ""], "unique_key '' must be a non-empty string"),
    (["enqueue", "t", "--depends-on", "0"], "depends_on item 0 must be a job id"),
    (["enqueue", "t", "--on-dependency-failure", "skip"], "on_dependency_failure 'skip' must be 'cancel' or 'run'"),
    (["jobs", "list", "--limit", "0"], "--limit 0 must be between 1 and 10000"),
    (["jobs", "list", "--state", "done"],
     "state 'done' is not valid here; valid states: waiting, scheduled, available, running, completed, failed, "
     "cancelled"),
    (["jobs", "list", "--queue", "Bad Queue"], "queue name 'Bad Queue' must match"),
    (["jobs", "list", "--tag", ""], "tag '' must be a non-empty string"),
    (["jobs", "retry", "--failed", "--queue", "Bad Queue"], "queue name 'Bad Queue' must match"),
    (["jobs", "retry", "<completed>", "--failed"], "give a job ID or --failed (not both)"),
    (["queues", "purge", "default", "--state", "done", "--yes"], "state 'done' is not valid here"),
    (["queues", "purge", "default", "--state", "running", "--yes"], "running jobs cannot be purged"),
    (["queues", "set", "default", "--concurrency", "²"], "--concurrency '²' must be a whole number >= 1 or 'none'"),
    (["queues", "set", "default", "--concurrency", "0"], "concurrency 0 must be a whole number from 1 to"),
    (["queues", "set", "default", "--rate", "20/fortnight"], "rate '20/fortnight' must look like N/s"),
    (["queues", "set", "default"], "give --concurrency, --rate or both"),
    (["schedules", "add", "s", "--cron", "61 * * * *", "--task", "t"], "61"),
    (["schedules", "add", "s", "--cron", "* * * * *", "--task", "t", "--timezone", "Mars/Base"],
     "unknown time zone 'Mars/Base'"),
    (["schedules", "add", "s", "--cron", "* * * * *", "--task", "t", "--args", "{"], "--args '{' is not valid JSON"),
    (["schedules", "add", "s", "--cron", "* * * * *", "--task", "t", "--misfire", "twice"],
     "--misfire 'twice' must be one of once, skip, all"),
    (["schedules", "add", "s", "--cron", "* * * * *", "--task", "t", "--max-catchup", "0"],
     "max_catchup 0 must be an integer from 1 to 10000"),
    (["schedules", "add", "s", "--cron", "* * * * *", "--task", "t", "--queue", "Bad Queue"],
     "queue name 'Bad Queue' must match"),
    (["health", "--max-age", "0"], "--max-age 0 must be seconds, greater than zero"),
    (["health", "--max-xact-age", "1e300"],  # once reached the database: "unexpected DatetimeFieldOverflow"
     "--max-xact-age 1e+300 must be seconds, greater than zero and at most 100 years"),
    (["prune", "--completed-older-than", "soon"], "--completed-older-than 'soon' must be a duration"),
    (["audit", "verify", "--audit-retention", "soon"], "--audit-retention 'soon' must be a duration"),
    # A typo once read as "the audit trail was altered" (its digest is in no chain).
    (["audit", "verify", "--expect", "abc"], "--expect 'abc' must be a head digest"),
    (["keys", "rotate", "--batch", "0"], "--batch 0 must be between 1 and 10000"),
    (["bench", "--scenario", "nope"], "unknown scenario 'nope'"),
    (["demo", "--timeout", "-1"], "--timeout -1 must be seconds, greater than zero"),
    (["demo", "--database", ""], "--database '' must be a database name of 1-63 bytes"),  # was a crash
]


@pytest.mark.parametrize(("argv", "message"), BAD_OPTION_VALUES, ids=[
    " ".join(a[:2]) + f"-{i}" for i, (a, _) in enumerate(BAD_OPTION_VALUES)])
def test_a_bad_option_value_is_a_usage_error_one_line_exit_2_and_changes_nothing(
        error_db: tuple[str, dict[str, int]], argv: list[str], message: str) -> None:
    database_dsn, ids = error_db
    argv = [arg.replace("<completed>", str(ids["completed"])) for arg in argv]
    with psycopg.connect(database_dsn) as conn:
        before = conn.execute("SELECT (SELECT count(*) FROM pgqueue.jobs), (SELECT count(*) FROM pgqueue.job_events),"
                              " (SELECT count(*) FROM pgqueue.queues)").fetchone()

    result = run(database_dsn, *argv)

    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("pgqueue: error: "), line
    assert message in line, line
    assert result.stdout == ""
    with psycopg.connect(database_dsn) as conn:
        assert conn.execute("SELECT (SELECT count(*) FROM pgqueue.jobs), (SELECT count(*) FROM pgqueue.job_events),"
                            " (SELECT count(*) FROM pgqueue.queues)").fetchone() == before


USAGE_ERRORS = [
    (["jobs", "list", "--limit", "abc"], "Invalid value for '--limit' / '-n': ", "pgqueue jobs list --help"),
    (["jobs", "list", "--bogus"], "No such option: --bogus", "pgqueue jobs list --help"),
    (["jobs", "show"], "Missing argument 'ID'", "pgqueue jobs show --help"),
    (["nosuch"], "No such command 'nosuch'", "pgqueue --help"),
    (["dashboard", "--port", "0"], "Invalid value for '--port'", "pgqueue dashboard --help"),
]


@pytest.mark.parametrize(("argv", "message", "hint"), USAGE_ERRORS, ids=[" ".join(a) for a, _, _ in USAGE_ERRORS])
def test_a_malformed_command_line_is_one_line_and_exits_2(argv: list[str], message: str, hint: str) -> None:
    result = run(None, *argv)

    # Was typer's usage line, a "Try ... --help" line and the message in a box.
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"pgqueue: error: {message}"), line
    assert line.endswith(f"(see `{hint}`)"), line
    assert result.stdout == ""


def test_a_command_line_without_a_command_still_prints_the_help() -> None:
    bare = run(None)
    group = run(None, "jobs")

    assert (bare.returncode, group.returncode) == (2, 2)
    assert "Usage: pgqueue [OPTIONS] COMMAND" in bare.stdout
    assert "Usage: pgqueue jobs [OPTIONS] COMMAND" in group.stdout
    assert "list" in group.stdout


def test_an_unreachable_database_is_one_line_without_the_password() -> None:
    result = run("postgresql://root:s3cret-pw@127.0.0.1:1/postgres", "jobs", "list")

    assert_one_line_error(result, "cannot connect to postgresql://root:***@127.0.0.1:1/postgres")
    assert "s3cret-pw" not in result.stderr


def test_an_empty_dsn_is_refused_rather_than_replaced_by_the_environments(dsn: str) -> None:
    # `--dsn "$DB"` with DB unset in a deploy script must not migrate PGQUEUE_DSN's database.
    result = run(dsn, "migrate", "--dsn", "")

    assert_one_line_error(result, "the DSN given is empty")


def test_migrate_gives_up_in_one_line_on_a_server_that_never_answers() -> None:
    # A socket that listens but never accepts: the TCP handshake succeeds, then nothing answers
    # (a firewalled or hung host). Without a connect timeout, migrate waited for it forever.
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:
        port = silent.getsockname()[1]
        result = run(f"postgresql://root@127.0.0.1:{port}/postgres", "migrate", "--check")

    assert_one_line_error(result, f"cannot connect to postgresql://root@127.0.0.1:{port}/postgres: connection timeout")


def test_audit_show_and_verify_pass_on_an_intact_trail_and_fail_in_one_line_once_it_is_edited(
        dsn: str, conn: Conn) -> None:
    job_id = int(ok(dsn, "enqueue", "audit-task", "--args", '{"n": 1}').strip())
    ok(dsn, "jobs", "cancel", str(job_id))

    def verified_with_nothing_pending() -> Any:
        # verify seals what is pending first; a transaction another test holds open on the same
        # server can delay that (sealing waits for the oldest open transaction), so ask again.
        report = ok_json(dsn, "audit", "verify")
        return report if report["pending_events"] == 0 else None

    report = wait_until(verified_with_nothing_pending, timeout=60, interval=0.5, message="everything sealed")
    assert report["ok"] is True
    assert report["events"] == 2
    assert report["pending_events"] == 0
    assert report["problems"] == []
    digest = report["head_digest"]
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    table = ok(dsn, "audit", "verify", "--expect", digest)
    assert "intact" in table
    assert digest in table

    trail = ok_json(dsn, "audit", "show", str(job_id))
    assert [(e["event"], e["actor"], e["seal_intact"]) for e in trail] == [
        ("enqueued", getpass.getuser(), True), ("cancelled", ACTOR, True)]
    # One seal or two: a transaction another test holds open on the shared server can hold the
    # cancel's row back from the first seal (sealing stops below the oldest open transaction).
    assert [e["seal"] for e in trail] in (["1 ok", "1 ok"], ["1 ok", "2 ok"])
    assert "cancelled" in ok(dsn, "audit", "show", str(job_id))

    conn.execute("SET session_replication_role = replica")
    conn.execute("UPDATE pgqueue.job_events SET actor = 'nobody' WHERE event = 'cancelled'")
    conn.commit()
    broken = run(dsn, "audit", "verify", "--json")
    assert broken.returncode == 1
    assert json.loads(broken.stdout)["ok"] is False
    assert broken.stderr.strip().count("\n") == 0
    # The edited row is the cancel's, in whichever seal took it (see above).
    cancel_seal = trail[1]["seal"].split()[0]
    assert broken.stderr.startswith(f"pgqueue: error: the audit trail was altered: seal {cancel_seal} ")
    plain = run(dsn, "audit", "verify")
    assert plain.stderr == broken.stderr  # one line: no empty line left by the progress bar off a terminal
    shown = run(dsn, "audit", "show", str(job_id))
    assert shown.returncode == 1
    assert f"{cancel_seal} ALTERED" in shown.stdout
    shown_json = run(dsn, "audit", "show", str(job_id), "--json")
    assert shown_json.returncode == 1
    assert json.loads(shown_json.stdout)[1]["seal_intact"] is False
    assert shown_json.stderr.startswith("pgqueue: error: a seal covering this job's trail does not match")

    missing = run(dsn, "audit", "show", "999999")
    assert missing.returncode == 1
    assert missing.stderr.strip() == ("pgqueue: error: no audit events for job 999999 "
                                      "(it never existed, or retention pruned its trail)")
