"""Each shipped role (``sql/roles.sql``), logged in for real, can do its part and nothing more.

A LOGIN role per shipped role (see ``tests/shipped_roles.py``) drives the public API, an
in-process worker and scheduler, and the CLI; then tries what its part does not need: forged jobs
and audit rows, rewriting jobs, touching the trail. Owner connections (``dsn``) only set up and
read back. The audit trail's own guards are in ``test_audit_roles.py``.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow

from pgqueue import App, Backoff, CircuitBreaker, Discard, Job, JobSpec, Snooze, Worker, _audit, _retention
from pgqueue._crypto import Keyring, generate_key
from pgqueue._db.keys import KeyStore
from pgqueue._key_rotation import rotate
from pgqueue._scheduler import Scheduler
from pgqueue.settings import Settings
from tests.e2e.test_cli import ACTOR, run
from tests.helpers import psql, scratch_database, wait_until
from tests.integration.copy_audit import HOSTILE_ACTOR, audit_rows, copy_with_actor
from tests.shipped_roles import ROLES_SQL, Logins, apply_roles_sql, shipped_role_logins

Conn = psycopg.Connection[TupleRow]
DAY = 86400.0


@pytest.fixture(scope="module")
def logins(pg_server_dsn: str) -> Iterator[Logins]:
    with shipped_role_logins(pg_server_dsn) as made:
        yield made


@pytest.fixture
def as_role(dsn: str, pg_server_dsn: str, logins: Logins) -> Any:
    """``as_role("worker")``: this test's database, logged in as the worker login."""
    apply_roles_sql(dsn, pg_server_dsn)
    return lambda role: logins.dsn(dsn, role)


@pytest.fixture(scope="module")
def shared_role(pg_server_dsn: str, template_db: str, logins: Logins) -> Iterator[Any]:
    """Like ``as_role``, on one database for the module: for attempts that are refused or rolled back."""
    with scratch_database(pg_server_dsn, template_db) as database_dsn:
        apply_roles_sql(database_dsn, pg_server_dsn)
        yield lambda role: logins.dsn(database_dsn, role)


@pytest.fixture
def owner(dsn: str) -> Iterator[Conn]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def refusal(role_dsn: str, statement: str | sql.Composed, params: Any = None) -> str | None:
    """The error the database gives ``statement`` run as that login (rolled back), or None if it ran."""
    with psycopg.connect(role_dsn) as conn:
        try:
            conn.execute(statement, params)
        except psycopg.errors.InsufficientPrivilege as exc:
            return exc.diag.message_primary or str(exc)
        finally:
            conn.rollback()
    return None


def insert(table: str, columns: str, values: str) -> sql.Composed:
    """An INSERT of literal values written in this file (the forgeries tried below)."""
    return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(sql.SQL(table), sql.SQL(columns), sql.SQL(values))


def count(conn: Conn, query: str, params: Any = None) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def enqueued_events(conn: Conn, ids: list[int]) -> int:
    return count(conn, "SELECT count(*) FROM pgqueue.job_events WHERE event = 'enqueued' AND job_id = ANY(%s)", [ids])


# --- the enqueuer ---------------------------------------------------------------------------------


def test_an_enqueuer_login_enqueues_single_unique_and_bulk_jobs_with_theiraudit_rows(as_role: Any,
                                                                                        owner: Conn) -> None:
    enqueuer = as_role("enqueuer")
    app = App(enqueuer)
    with psycopg.connect(enqueuer) as conn:
        single = app.enqueue(conn, "t", {"n": 1})
        delayed = app.enqueue(conn, "t", {"n": 2}, delay=3600)
        unique = app.enqueue(conn, "t", {"n": 3}, unique_key="k")
        assert app.enqueue(conn, "t", {"n": 4}, unique_key="k") == unique
        copied = app.enqueue_many(conn, [JobSpec("t", {"n": n}) for n in range(600)])  # the COPY path
        batched = app.enqueue_many(conn, [JobSpec("t", {"n": n}, unique_key=f"u{n}") for n in range(20)])
        conn.commit()

    async def enqueue_async() -> list[int]:
        async with await psycopg.AsyncConnection.connect(enqueuer, autocommit=True) as aconn:
            return [await app.enqueue_async(aconn, "t", {"n": 5}),
                    *await app.enqueue_many_async(aconn, [JobSpec("t", {"n": n}) for n in range(600)])]

    from_async = asyncio.run(enqueue_async())
    ids = [single, delayed, unique, *copied, *batched, *from_async]
    assert len(set(ids)) == len(ids) == 3 + 600 + 20 + 601
    assert count(owner, "SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) AND attempt = 0", [ids]) == len(ids)
    assert enqueued_events(owner, ids) == len(ids)
    assert owner.execute("SELECT state FROM pgqueue.jobs WHERE id = %s", [delayed]).fetchone() == ("scheduled",)


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_an_enqueuer_under_row_security_gets_the_copied_jobs_audit_rows_by_insert(as_role: Any, owner: Conn,
                                                                                 use_async: bool) -> None:
    # PostgreSQL refuses COPY FROM into job_events for a role its row-level security applies to:
    # the enqueuer's copied jobs get the same audit rows through the INSERT.
    copyable, ids = copy_with_actor(as_role("enqueuer"), HOSTILE_ACTOR, use_async=use_async)

    assert not copyable
    assert audit_rows(owner, ids) == {("enqueued", None, "available", 0, HOSTILE_ACTOR, None, None)}


@pytest.mark.parametrize(("columns", "values"), [
    ("task, state", "'t', 'completed'"),
    ("task, state, attempt, worker_id, lease_token", "'t', 'running', 1, 'w', gen_random_uuid()"),
    ("task, state, finished_at, last_error", """'t', 'failed', now(), '{"type": "X"}'"""),
    ("task, attempt", "'t', 3"),
    ("task, result", "'t', '{\"forged\": true}'"),
    ("task, started_at", "'t', now()"),
    ("task, enqueued_at", "'t', now() - interval '1 year'"),
])
def test_an_enqueuer_login_cannot_insert_a_job_that_is_not_fresh(shared_role: Any, columns: str, values: str) -> None:
    assert refusal(shared_role("enqueuer"), insert("pgqueue.jobs", columns, values)) is not None


def test_a_login_that_does_not_own_the_table_gets_the_fresh_jobs_rule_even_with_every_column_granted(
        as_role: Any, owner: Conn) -> None:
    # The column grants stop the shipped roles; the trigger stops any other role too.
    owner.execute("GRANT INSERT ON pgqueue.jobs TO pgqueue_enqueuer")
    message = refusal(as_role("enqueuer"), "INSERT INTO pgqueue.jobs (task, state) VALUES ('t', 'completed')")
    assert message is not None
    assert "must be inserted fresh" in message
    noted = refusal(as_role("enqueuer"),
                    "INSERT INTO pgqueue.jobs (task, progress_note_encrypted) VALUES ('t', '\\x01')")
    assert noted is not None
    assert "must be inserted fresh" in noted
    # The owner may still load history (an import, a test fixture).
    owner.execute("INSERT INTO pgqueue.jobs (task, state, attempt, finished_at) VALUES ('t', 'completed', 1, now())")


@pytest.mark.parametrize(("columns", "values"), [
    ("job_id, event, from_state, to_state, attempt", "1, 'completed', 'running', 'completed', 1"),
    ("job_id, event, to_state, attempt", "1, 'enqueued', 'completed', 0"),
    ("job_id, event, to_state, attempt, worker_id", "1, 'enqueued', 'available', 0, 'w'"),
    ("job_id, event, to_state, attempt, detail", """1, 'enqueued', 'available', 0, '{"schedule": "s"}'"""),
    ("job_id, event, to_state, attempt, actor", "1, 'enqueued', 'available', 0, 'scheduler'"),
    ("job_id, event, from_state, to_state, attempt, actor", "1, 'retried', 'failed', 'available', 1, 'cli:ops'"),
    ("job_id, event, actor", "NULL, 'queue_paused', 'cli:ops'"),
    ("job_id, event, to_state, attempt", "NULL, 'enqueued', 'available', 0"),
])
def test_an_enqueuer_login_can_write_only_the_enqueued_row_of_a_fresh_job(shared_role: Any, columns: str,
                                                                            values: str) -> None:
    enqueuer = shared_role("enqueuer")
    assert refusal(enqueuer, "INSERT INTO pgqueue.job_events (job_id, event, to_state, attempt, actor) "
                             "VALUES (1, 'enqueued', 'available', 0, 'web')") is None
    assert refusal(enqueuer, insert("pgqueue.job_events", columns, values)) is not None


@pytest.mark.parametrize("statement", [
    "SELECT args FROM pgqueue.jobs",
    "SELECT result FROM pgqueue.jobs",
    "UPDATE pgqueue.jobs SET state = 'completed'",
    "DELETE FROM pgqueue.jobs",
    "SELECT * FROM pgqueue.job_events",
    "DELETE FROM pgqueue.job_events",
    "UPDATE pgqueue.audit_seals SET pruned_at = now()",
    "INSERT INTO pgqueue.queues (name, paused) VALUES ('q', true)",
    "DELETE FROM pgqueue.schedules",
])
def test_an_enqueuer_login_cannot_read_payloads_change_jobs_or_touch_the_trail(shared_role: Any,
                                                                               statement: str) -> None:
    assert refusal(shared_role("enqueuer"), statement) is not None


@pytest.mark.parametrize("statement", [
    "INSERT INTO pgqueue.encrypted_tasks (task) VALUES ('forged')",
    "UPDATE pgqueue.encrypted_tasks SET declared_at = now()",
    "DELETE FROM pgqueue.encrypted_tasks",
])
def test_an_enqueuer_login_reads_encrypted_tasks_and_sql_enqueues_a_plain_task_but_cannot_write_them(
        as_role: Any, owner: Conn, statement: str) -> None:
    # `pgqueue enqueue` reads pgqueue.encrypted_tasks to encrypt such a task; pgqueue.enqueue()
    # (security invoker) reads it to refuse one. Only workers write it.
    owner.execute("INSERT INTO pgqueue.encrypted_tasks (task) VALUES ('sealed')")
    enqueuer = as_role("enqueuer")
    with psycopg.connect(enqueuer, autocommit=True) as conn:
        assert conn.execute("SELECT task FROM pgqueue.encrypted_tasks").fetchall() == [("sealed",)]
        plain = count(conn, "SELECT pgqueue.enqueue('plain', '{}')")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="declared encrypt=True"):
            conn.execute("SELECT pgqueue.enqueue('sealed', '{\"ssn\": \"1\"}')")
    assert owner.execute("SELECT task FROM pgqueue.jobs").fetchall() == [("plain",)]
    assert enqueued_events(owner, [plain]) == 1
    assert refusal(enqueuer, statement) is not None
    assert owner.execute("SELECT task FROM pgqueue.encrypted_tasks").fetchall() == [("sealed",)]


# --- the worker -----------------------------------------------------------------------------------


@contextmanager
def worker_running(app: App) -> Iterator[Worker]:
    """An in-process worker, stopped (gracefully) on the way out."""
    worker = Worker(app, concurrency=4, settings=app.settings)
    exit_codes: list[int] = []
    thread = threading.Thread(target=lambda: exit_codes.append(worker.run(install_signal_handlers=False)),
                              daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert not thread.is_alive(), "the worker did not stop"
    assert exit_codes[0] == 0


def test_a_worker_login_runs_jobs_schedules_cron_jobs_seals_and_prunes(as_role: Any, owner: Conn,
                                                                       dsn: str) -> None:
    worker_dsn = as_role("worker")
    app = App(worker_dsn, settings=Settings(dsn=worker_dsn, lease_seconds=5, poll_seconds=0.2,
                                            shutdown_grace_seconds=5))

    @app.task(name="ok")
    def ok(job: Job) -> dict[str, bool]:
        job.set_progress(50, "half")
        return {"done": True}

    @app.task(name="flaky", max_attempts=3, backoff=Backoff.fixed(0))
    def flaky(job: Job) -> None:
        if job.attempt == 1:
            raise ValueError("first attempt fails")

    @app.task(name="hopeless")
    def hopeless(job: Job) -> None:
        raise Discard("never works")

    app.schedule("every-minute", cron="* * * * *", task="ok")
    ids = [App(dsn).enqueue(owner, task, {}) for task in ("ok", "flaky", "hopeless")]

    # Stopped before the jobs are aged below: its own pruner must not delete them first.
    with worker_running(app):
        wait_until(lambda: count(owner, "SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) "
                                        "AND state IN ('completed', 'failed')", [ids]) == 3, timeout=30,
                   message="the worker login to finish the three jobs")
    states: dict[str, str] = dict(
        owner.execute("SELECT task, state FROM pgqueue.jobs WHERE id = ANY(%s)", [ids]).fetchall())
    assert states == {"ok": "completed", "flaky": "completed", "hopeless": "failed"}
    trail = [e for (e,) in owner.execute("SELECT event FROM pgqueue.job_events WHERE job_id = %s ORDER BY id",
                                         [ids[1]]).fetchall()]
    assert trail == ["enqueued", "claimed", "retry_scheduled", "claimed", "completed"]

    # The scheduler: sync the code schedule, then insert its due run.
    scheduler = Scheduler(app, dsn=worker_dsn)
    try:
        assert scheduler.sync().created == ("every-minute",)
        owner.execute("UPDATE pgqueue.schedules SET next_run_at = date_trunc('minute', now())")  # a due fire time
        assert len(scheduler.run_pass().inserted) == 1
    finally:
        scheduler.close()
    cron_job = owner.execute("SELECT e.actor, e.detail ->> 'schedule' FROM pgqueue.job_events AS e "
                             "WHERE e.event = 'enqueued' AND e.detail ? 'schedule'").fetchall()
    assert cron_job == [("scheduler", "every-minute")]

    # Sealing and retention, as the maintenance leader does them.
    owner.execute("UPDATE pgqueue.jobs SET finished_at = now() - interval '2 days' WHERE id = ANY(%s)", [ids])
    with psycopg.connect(worker_dsn, autocommit=True) as conn:
        assert _audit.can_seal(conn)
        wait_until(lambda: _audit.seal_pending(conn).seals >= 0 and _audit.verify(conn).pending_events == 0,
                   timeout=60, message="the worker login to seal every committed row")
        report = _retention.prune(conn, _retention.RetentionPolicy(completed=DAY, failed=DAY, audit=0.0),
                                  "maintenance")
    assert report.finished
    assert (report.completed, report.failed) == (2, 1)
    assert report.audit_events > 0
    summary = owner.execute("SELECT actor, detail ->> 'completed' FROM pgqueue.job_events "
                            "WHERE event = 'pruned'").fetchall()
    assert summary == [("maintenance", "2")]
    verified = run(as_role("reader"), "audit", "verify", "--audit-retention", "0s", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_worker_and_enqueuer_logins_run_limited_queues_limited_tasks_and_groups(as_role: Any, owner: Conn) -> None:
    # Flow limits need the worker to keep pgqueue.task_limits and the rate_starts ledger, and the
    # enqueuer to write group_key: a missing grant fails here.
    enqueuer = App(as_role("enqueuer"))
    ids = enqueuer.enqueue_many(None, [JobSpec("ok", queue="sms") for _ in range(3)]
                                + [JobSpec("capped") for _ in range(3)]
                                + [JobSpec("grouped", group="patient:42") for _ in range(2)])
    ids.append(enqueuer.enqueue(None, "grouped", group="patient:43"))
    owner.execute("INSERT INTO pgqueue.queues (name, concurrency, rate_limit, rate_period_seconds)"
                  " VALUES ('sms', 2, 100, 60)")
    worker_dsn = as_role("worker")
    app = App(worker_dsn, settings=Settings(dsn=worker_dsn, lease_seconds=5, poll_seconds=0.2,
                                            shutdown_grace_seconds=5))

    @app.task(name="ok")
    def ok(job: Job) -> None: ...

    @app.task(name="capped", concurrency=1, rate="100/m")
    def capped(job: Job) -> None: ...

    @app.task(name="grouped", group_concurrency=1)
    def grouped(job: Job) -> None: ...

    with worker_running(app):
        wait_until(lambda: count(owner, "SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) AND state = 'completed'",
                                 [ids]) == len(ids), timeout=20)

    assert count(owner, "SELECT count(*) FROM pgqueue.task_limits") == 2
    assert count(owner, "SELECT sum(starts) FROM pgqueue.rate_starts WHERE scope IN ('queue:sms', 'task:capped')") == 6
    assert count(owner, "SELECT count(*) FROM pgqueue.jobs WHERE group_key = 'patient:42'") == 2


def test_a_worker_login_records_its_codes_encrypted_tasks_at_start(as_role: Any, owner: Conn) -> None:
    owner.execute("INSERT INTO pgqueue.encrypted_tasks (task) VALUES ('was-sealed')")
    worker_dsn = as_role("worker")
    app = App(worker_dsn, settings=Settings(dsn=worker_dsn, lease_seconds=5, poll_seconds=0.2,
                                            shutdown_grace_seconds=5))

    @app.task(name="sealed", encrypt=True)
    def sealed(job: Job) -> None: ...

    @app.task(name="was-sealed")
    def was_sealed(job: Job) -> None: ...

    assert Worker(app, concurrency=1, settings=app.settings).run_until_empty() == 0
    assert owner.execute("SELECT task FROM pgqueue.encrypted_tasks").fetchall() == [("sealed",)]


def test_a_worker_login_seals_an_encrypted_jobs_note_and_an_admin_login_rotates_it(as_role: Any, owner: Conn) -> None:
    old, new = generate_key(), generate_key()
    worker_dsn = as_role("worker")
    app = App(worker_dsn, settings=Settings(dsn=worker_dsn, lease_seconds=5, poll_seconds=0.2,
                                            shutdown_grace_seconds=5, encryption_keys=(old,)))

    @app.task(name="letter", encrypt=True)
    def letter(job: Job, patient: str) -> None:
        job.set_progress(50, note=f"letter for {patient}")

    job_id = app.enqueue(owner, "letter", {"patient": "Jane Doe"})
    assert Worker(app, concurrency=1, settings=app.settings).run_until_empty() == 0
    state, note, sealed = owner.execute("SELECT state, progress_note, progress_note_encrypted FROM pgqueue.jobs "
                                        "WHERE id = %s", [job_id]).fetchone() or (None, None, None)
    assert (state, note) == ("completed", None)
    assert sealed is not None

    with psycopg.connect(as_role("admin")) as conn:
        report = rotate(KeyStore(conn), Keyring((new, old)), actor="cli:test")

    assert report.as_dict()["progress_notes"] == 1
    rotated = owner.execute("SELECT progress_note_encrypted FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone()
    assert rotated is not None
    assert Keyring((new,)).decrypt(bytes(rotated[0]), "progress_note", "letter") == b"letter for Jane Doe"


@pytest.mark.parametrize(("columns", "values"), [
    # an operator's action, or the scheduler's, or maintenance's, written by a worker
    ("job_id, event, from_state, to_state, attempt, actor", "1, 'retried', 'failed', 'available', 1, 'cli:ops'"),
    ("job_id, event, actor", "NULL, 'queue_paused', 'cli:ops'"),
    ("job_id, event, to_state, attempt, actor", "1, 'enqueued', 'available', 0, 'web'"),
    ("job_id, event, to_state, attempt, actor", "1, 'enqueued', 'available', 0, 'scheduler'"),
    ("job_id, event, actor", "NULL, 'pruned', 'cli:ops'"),
    ("job_id, event, actor", "NULL, 'keys_rotated', 'maintenance'"),
    # a worker's event under someone else's name
    ("job_id, event, from_state, to_state, attempt, worker_id, actor",
     "1, 'completed', 'running', 'completed', 1, 'w', 'cli:ops'"),
])
def test_a_worker_login_can_write_only_the_events_workers_schedulers_and_maintenance_write(
        shared_role: Any, columns: str, values: str) -> None:
    worker = shared_role("worker")
    assert refusal(worker, "INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, worker_id) "
                           "VALUES (1, 'claimed', 'available', 'running', 1, 'w')") is None
    assert refusal(worker, insert("pgqueue.job_events", columns, values)) is not None


@pytest.mark.parametrize("statement", [
    "INSERT INTO pgqueue.jobs (task, state) VALUES ('t', 'completed')",
    "UPDATE pgqueue.jobs SET args = '{\"forged\": true}'",
    "UPDATE pgqueue.jobs SET task = 'other'",
    "UPDATE pgqueue.jobs SET priority = 0",
    "UPDATE pgqueue.jobs SET enqueued_at = now()",
    "UPDATE pgqueue.job_events SET actor = 'x'",
    "UPDATE pgqueue.audit_seals SET digest = ''",
    "DELETE FROM pgqueue.audit_seals",
    "INSERT INTO pgqueue.queues (name, paused) VALUES ('q', true)",
])
def test_a_worker_login_cannot_rewrite_jobs_the_trail_or_queue_settings(shared_role: Any, statement: str) -> None:
    assert refusal(shared_role("worker"), statement) is not None


# --- job control: circuit breakers, snooze, cancelling a running job ------------------------------


def test_a_worker_login_drives_breakers_and_snoozes_and_an_admin_login_cancels_and_resets(
        as_role: Any, owner: Conn, dsn: str) -> None:
    worker_dsn = as_role("worker")
    admin = as_role("admin")
    app = App(worker_dsn, settings=Settings(dsn=worker_dsn, lease_seconds=5, poll_seconds=0.2,
                                            shutdown_grace_seconds=5))
    running = threading.Event()

    @app.task(name="guarded", max_attempts=10, backoff=Backoff.fixed(0),
              circuit_breaker=CircuitBreaker(failures=2, window=60, cooldown=0.2))
    def guarded(job: Job) -> None:
        if job.attempt <= 2:
            raise ValueError("downstream down")

    @app.task(name="snoozer")
    def snoozer(job: Job) -> None:
        if count(owner, "SELECT count(*) FROM pgqueue.job_events WHERE job_id = %s AND event = 'snoozed'",
                 [job.id]) == 0:
            raise Snooze(0)

    @app.task(name="long")
    async def long(job: Job) -> None:
        running.set()
        await asyncio.sleep(60)

    guarded_id, snoozer_id, long_id = (App(dsn).enqueue(owner, task, {}) for task in ("guarded", "snoozer", "long"))
    with worker_running(app):
        wait_until(lambda: count(owner, "SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) AND state = 'completed'",
                                 [[guarded_id, snoozer_id]]) == 2, timeout=30,
                   message="the worker login to finish the breaker's and the snoozer's jobs")
        assert running.wait(30)
        cancelled = run(admin, "jobs", "cancel", str(long_id))
        assert cancelled.returncode == 0, cancelled.stderr
        wait_until(lambda: not running.is_set() or count(
            owner, "SELECT count(*) FROM pgqueue.job_events WHERE event = 'cancelled' AND job_id = %s", [long_id]),
            timeout=10)
    breaker_trail = owner.execute("SELECT event, worker_id IS NOT NULL FROM pgqueue.job_events "
                                  "WHERE job_id IS NULL AND event LIKE 'breaker%%' ORDER BY id").fetchall()
    assert breaker_trail == [("breaker_opened", True), ("breaker_half_opened", True), ("breaker_closed", True)]
    assert owner.execute("SELECT event FROM pgqueue.job_events WHERE job_id = %s ORDER BY id",
                         [snoozer_id]).fetchall()[2] == ("snoozed",)
    assert owner.execute("SELECT state FROM pgqueue.jobs WHERE id = %s", [long_id]).fetchone() == ("cancelled",)

    owner.execute("UPDATE pgqueue.circuit_breakers SET state = 'open', opened_at = now()")
    reset = run(admin, "breakers", "reset", "guarded")
    assert reset.returncode == 0, reset.stderr
    assert owner.execute("SELECT state FROM pgqueue.circuit_breakers").fetchall() == [("closed",)]
    assert owner.execute("SELECT actor, detail FROM pgqueue.job_events WHERE event = 'breaker_reset'").fetchall() == [
        (ACTOR, {"task": "guarded", "source": "cli"})]
    listed = run(as_role("reader"), "breakers", "list", "--json")
    assert listed.returncode == 0
    assert '"task": "guarded"' in listed.stdout


@pytest.mark.parametrize(("role", "statement"), [
    ("worker", """INSERT INTO pgqueue.job_events (job_id, event, actor, detail)
                  VALUES (NULL, 'breaker_reset', 'cli:ops', '{"task": "t"}')"""),
    ("worker", "TRUNCATE pgqueue.circuit_breakers"),
    ("admin", """INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, detail)
                 VALUES (NULL, 'breaker_opened', 'closed', 'open', '{"task": "t"}')"""),
    ("admin", "UPDATE pgqueue.circuit_breakers SET failure_threshold = 1000"),
    ("admin", "INSERT INTO pgqueue.circuit_breakers (task, failure_threshold, window_seconds, cooldown_seconds) "
              "VALUES ('t', 1, 1, 1)"),
    ("enqueuer", "SELECT * FROM pgqueue.circuit_breakers"),
    ("enqueuer", "INSERT INTO pgqueue.job_events (job_id, event, to_state, attempt) "
                 "VALUES (1, 'snoozed', 'available', 0)"),
    ("reader", "UPDATE pgqueue.circuit_breakers SET state = 'closed'"),
])
def test_breaker_state_and_events_are_written_only_by_the_role_whose_part_it_is(
        shared_role: Any, role: str, statement: str) -> None:
    assert refusal(shared_role(role), statement) is not None


# --- the admin and the reader ---------------------------------------------------------------------


def test_an_admin_login_retries_cancels_pauses_purges_and_prunes_from_the_cli(as_role: Any, owner: Conn,
                                                                              dsn: str) -> None:
    admin = as_role("admin")
    app = App(dsn)
    cancel_then_retry = app.enqueue(owner, "t", {})
    to_purge = [app.enqueue(owner, "t", {}, queue="bulk") for _ in range(3)]
    old = app.enqueue(owner, "t", {})
    owner.execute("UPDATE pgqueue.jobs SET state = 'completed', attempt = 1, finished_at = now() - interval '2 days' "
                  "WHERE id = %s", [old])

    for args in (("jobs", "cancel", str(cancel_then_retry)), ("jobs", "retry", str(cancel_then_retry)),
                 ("queues", "pause", "bulk"), ("queues", "purge", "bulk", "--yes"),
                 ("prune", "--completed-older-than", "1d"), ("audit", "verify")):
        result = run(admin, *args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)

    trail = owner.execute("SELECT event, actor, detail ->> 'source' FROM pgqueue.job_events WHERE job_id = %s "
                          "ORDER BY id", [cancel_then_retry]).fetchall()
    assert trail[1:] == [("cancelled", ACTOR, "cli"), ("retried", ACTOR, "cli")]
    assert owner.execute("SELECT paused FROM pgqueue.queues WHERE name = 'bulk'").fetchone() == (True,)
    assert count(owner, "SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s)", [[*to_purge, old]]) == 0
    assert count(owner, "SELECT count(*) FROM pgqueue.job_events WHERE event = 'purged' AND actor = %s",
                 [ACTOR]) == 3
    assert count(owner, "SELECT count(*) FROM pgqueue.job_events WHERE event = 'pruned' AND actor = %s",
                 [ACTOR]) == 1
    # verify sealed as the admin. A seal covers only transactions older than the oldest one still
    # open anywhere in the cluster, and parallel tests on the same server hold some open: under
    # load the verify above can find nothing it may seal yet (seen once, -n 2 beside a busy loop).
    wait_until(lambda: run(admin, "audit", "verify").returncode == 0
               and count(owner, "SELECT count(*) FROM pgqueue.audit_seals") >= 1,
               timeout=60, interval=0.5, message="audit verify, run as the admin, to seal the trail")
    assert count(owner, "SELECT count(*) FROM pgqueue.job_events WHERE actor = %s AND event <> 'enqueued' "
                        "AND detail ->> 'source' IS DISTINCT FROM 'cli'", [ACTOR]) == 0


def test_an_admin_login_acts_from_the_dashboard_with_source_web(as_role: Any, owner: Conn, dsn: str) -> None:
    import warnings

    from pgqueue.web import create_app

    with warnings.catch_warnings():  # starlette's note about httpx2, as in test_web_api
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    app = App(dsn)
    job_id = app.enqueue(owner, "t", {}, queue="webq")
    web = create_app(as_role("admin"), admin_token="admin-secret-token", read_token="read-secret-token")
    bearer = {"Authorization": "Bearer admin-secret-token"}
    with TestClient(web, base_url="http://dashboard.example") as client:
        answers = [client.post(f"/api/jobs/{job_id}/cancel", headers=bearer),
                   client.post(f"/api/jobs/{job_id}/retry", headers=bearer),
                   client.post("/api/queues/webq/pause", headers=bearer),
                   client.put("/api/queues/webq/limits", json={"concurrency": 3}, headers=bearer),
                   client.post("/api/queues/webq/resume", headers=bearer)]

    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    rows = owner.execute("SELECT event, actor, detail ->> 'source' FROM pgqueue.job_events "
                         "WHERE event <> 'enqueued' ORDER BY id").fetchall()
    assert rows == [("cancelled", "admin-token", "web"), ("retried", "admin-token", "web"),
                    ("queue_paused", "admin-token", "web"), ("queue_limits_set", "admin-token", "web"),
                    ("queue_resumed", "admin-token", "web")]


@pytest.mark.parametrize(("columns", "values"), [
    ("job_id, event, from_state, to_state, attempt, worker_id", "1, 'claimed', 'available', 'running', 1, 'w'"),
    ("job_id, event, from_state, to_state, attempt", "1, 'completed', 'running', 'completed', 1"),
    ("job_id, event, actor", "NULL, 'pruned', 'maintenance'"),
    ("job_id, event, actor, detail", """NULL, 'schedule_misfired', 'scheduler', '{"schedule": "s"}'"""),
    ("job_id, event, from_state, to_state, attempt, actor, worker_id",
     "1, 'cancelled', 'running', 'cancelled', 1, 'cli:ops', 'w'"),
])
def test_an_admin_login_cannot_write_a_workers_or_the_schedulers_events(shared_role: Any, columns: str,
                                                                        values: str) -> None:
    admin = shared_role("admin")
    assert refusal(admin, "INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, actor) "
                          "VALUES (1, 'cancelled', 'available', 'cancelled', 0, 'cli:ops')") is None
    assert refusal(admin, insert("pgqueue.job_events", columns, values)) is not None


@pytest.mark.parametrize("statement", [
    "INSERT INTO pgqueue.jobs (task, state, attempt, finished_at) VALUES ('t', 'completed', 1, now())",
    "UPDATE pgqueue.jobs SET result = '{\"forged\": true}'",
    "UPDATE pgqueue.jobs SET args = '{}'",
    "UPDATE pgqueue.jobs SET attempt = 0",
    "UPDATE pgqueue.job_events SET actor = 'x'",
    "UPDATE pgqueue.audit_seals SET last_at = now()",
])
def test_an_admin_login_cannot_rewrite_what_a_job_was_or_the_trail(shared_role: Any, statement: str) -> None:
    assert refusal(shared_role("admin"), statement) is not None


def test_a_reader_login_verifies_the_trail_while_rows_are_pending_and_can_write_nothing(
        as_role: Any, owner: Conn, dsn: str) -> None:
    app = App(dsn)
    for n in range(3):
        app.enqueue(owner, "t", {"n": n})
    wait_until(lambda: _audit.seal_pending(owner).seals >= 0 and _audit.verify(owner).pending_events == 0,
               timeout=60, message="the owner to seal the first rows")
    app.enqueue(owner, "t", {"n": 3})  # pending: the reader may not seal it
    reader = as_role("reader")
    with psycopg.connect(reader, autocommit=True) as conn:
        assert not _audit.can_seal(conn)

    result = run(reader, "audit", "verify", "--json")

    assert result.returncode == 0, result.stdout + result.stderr
    assert '"ok": true' in result.stdout
    assert '"pending_events": 1' in result.stdout
    for statement in ("INSERT INTO pgqueue.audit_seals (seal_no, xid_from, xid_to, events, first_at, last_at, "
                      "prev_digest, digest) VALUES (99, '0', '1', 1, now(), now(), '', '')",
                      "INSERT INTO pgqueue.job_events (job_id, event, to_state, attempt) VALUES (1, 'enqueued', "
                      "'available', 0)",
                      "INSERT INTO pgqueue.jobs (task) VALUES ('t')",
                      "UPDATE pgqueue.jobs SET state = 'cancelled'",
                      "DELETE FROM pgqueue.job_events"):
        assert refusal(reader, statement) is not None, statement


def test_roles_sql_is_idempotent_with_psql_and_takes_back_what_an_older_version_granted(
        as_role: Any, owner: Conn, dsn: str, pg_server_dsn: str) -> None:
    # An older roles.sql granted table-wide INSERT on jobs and every column's UPDATE.
    owner.execute("GRANT INSERT, UPDATE ON pgqueue.jobs TO pgqueue_enqueuer, pgqueue_worker")
    apply_roles_sql(dsn, pg_server_dsn)
    assert refusal(as_role("worker"), "UPDATE pgqueue.jobs SET args = '{}'") is not None
    assert refusal(as_role("enqueuer"), "INSERT INTO pgqueue.jobs (task, worker_id) VALUES ('t', 'w')") is not None
    # psql, as the file's header tells operators to run it.
    applied = subprocess.run([psql(), dsn, "-v", "ON_ERROR_STOP=1", "-q", "-f", str(ROLES_SQL)],
                             capture_output=True, text=True, timeout=60, check=False)
    assert applied.returncode == 0, applied.stderr
    assert refusal(as_role("enqueuer"), "INSERT INTO pgqueue.job_events (job_id, event, to_state, attempt) "
                                        "VALUES (1, 'enqueued', 'available', 0)") is None


def test_a_prune_run_that_fails_midway_records_the_batches_it_committed(as_role: Any, owner: Conn,
                                                                       dsn: str) -> None:
    app = App(dsn)
    ids = [app.enqueue(owner, "t", {}) for _ in range(3)]
    owner.execute("UPDATE pgqueue.jobs SET state = 'completed', attempt = 1, finished_at = now() - interval '2 days' "
                  "WHERE id = ANY(%s)", [ids])
    # Without the grant retention needs for schedule_runs, the run fails after a first batch of
    # jobs: the second batch (the last job, then schedule_runs) rolls back whole, its job kept.
    owner.execute("REVOKE UPDATE (inserted_at) ON pgqueue.schedule_runs FROM pgqueue_worker")
    with psycopg.connect(as_role("worker"), autocommit=True) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        _retention.prune(conn, _retention.RetentionPolicy(completed=DAY, failed=None, audit=DAY), "maintenance",
                         batch_size=2)

    assert count(owner, "SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s)", [ids]) == 1
    summary = owner.execute("SELECT actor, detail FROM pgqueue.job_events WHERE event = 'pruned'").fetchall()
    assert len(summary) == 1
    actor, detail = summary[0]
    assert actor == "maintenance"
    assert (detail["completed"], detail["finished"]) == (2, False)



def test_workflows_run_with_the_shipped_roles_enqueuer_and_worker(as_role: Any, owner: Conn) -> None:
    """An enqueuer login enqueues a group with a callback and a job depending on it; a worker login
    runs them: the database's triggers release and cancel dependents whatever role finished the job,
    and an admin login retries the failed dependency, bringing its cancelled dependent back."""
    import pgqueue
    from pgqueue import admin

    enqueuer = as_role("enqueuer")
    producer = App(enqueuer)
    with psycopg.connect(enqueuer) as conn:
        wf = producer.enqueue_workflow(conn, pgqueue.group([pgqueue.sig("ok"), pgqueue.sig("ok")],
                                                           then=pgqueue.sig("collect")))
        after = producer.enqueue(conn, "ok", depends_on=[wf.job_ids[-1]])
        doomed = producer.enqueue_workflow(conn, pgqueue.chain(pgqueue.sig("broken"), pgqueue.sig("ok")))
        conn.commit()
    assert count(owner, "SELECT count(*) FROM pgqueue.jobs WHERE state = 'waiting'") == 3

    worker_dsn = as_role("worker")
    app = App(worker_dsn, settings=Settings(dsn=worker_dsn, lease_seconds=5, poll_seconds=0.2,
                                            shutdown_grace_seconds=5))
    broken_runs: list[int] = []

    @app.task(name="ok")
    def ok(job: Job) -> int:
        return job.id

    @app.task(name="collect")
    def collect(job: Job) -> list[int]:
        return list(job.dependency_results().values())

    @app.task(name="broken", max_attempts=1)
    def broken(job: Job) -> None:
        broken_runs.append(job.id)
        if len(broken_runs) == 1:
            raise Discard("first time")

    ids = [*wf.job_ids, after, *doomed.job_ids]
    with worker_running(app):
        wait_until(lambda: count(owner, "SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) "
                                        "AND state IN ('completed', 'failed', 'cancelled')", [ids]) == len(ids),
                   timeout=30, message="the workflow jobs to finish")
        state: dict[int, str] = dict(
            owner.execute("SELECT id, state FROM pgqueue.jobs WHERE id = ANY(%s)", [ids]).fetchall())
        assert [state[i] for i in [*wf.job_ids, after]] == ["completed"] * 4
        assert [state[i] for i in doomed.job_ids] == ["failed", "cancelled"]
        assert owner.execute("SELECT result FROM pgqueue.jobs WHERE id = %s",
                             [wf.job_ids[-1]]).fetchone() == (wf.job_ids[:2],)

        with psycopg.connect(as_role("admin")) as conn:
            admin.retry_job(conn, doomed.job_ids[0], actor="ops")
            conn.commit()
        wait_until(lambda: count(owner, "SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) "
                                        "AND state = 'completed'", [doomed.job_ids]) == 2,
                   timeout=30, message="the retried chain to complete")
