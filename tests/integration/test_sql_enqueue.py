"""``pgqueue.enqueue(...)``: enqueueing from SQL (psql, a trigger, another language) behaves like
``App.enqueue``: same validation, row, audit row and NOTIFY, inside the caller's transaction."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

from pgqueue import App, Job, Worker
from pgqueue._db.notifications import NOTIFY_CHANNEL
from pgqueue.settings import Settings
from tests.helpers import psql
from tests.shipped_roles import Logins, apply_roles_sql, shipped_role_logins

Conn = psycopg.Connection[TupleRow]


def _one(conn: Conn, query: str, params: Any = None) -> tuple[Any, ...]:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row


def _psql(dsn: str, *commands: str) -> subprocess.CompletedProcess[str]:
    args = [psql(), dsn, "-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t"]
    for command in commands:
        args += ["-c", command]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_psql_enqueues_a_job_with_its_audit_row_and_named_options(dsn: str, conn: Conn) -> None:
    result = _psql(dsn, """SELECT pgqueue.enqueue('send-email', '{"to": "a@example.com"}', queue => 'emails',
                           priority => 25, tags => ARRAY['billing'], max_attempts => 3)""",
                   "SELECT pgqueue.enqueue('later', '{}', run_at => now() + interval '1 hour')")
    assert result.returncode == 0, result.stderr
    first, later = (int(line) for line in result.stdout.split())

    assert _one(conn, "SELECT task, queue, state, priority, args, tags, max_attempts, attempt, unique_key"
                      " FROM pgqueue.jobs WHERE id = %s", [first]) == (
        "send-email", "emails", "available", 25, {"to": "a@example.com"}, ["billing"], 3, 0, None)
    assert _one(conn, "SELECT queue, state, priority, max_attempts FROM pgqueue.jobs WHERE id = %s", [later]) == (
        "default", "scheduled", 100, 20)
    events = conn.execute("SELECT job_id, event, from_state, to_state, attempt, actor, detail"
                          " FROM pgqueue.job_events ORDER BY id").fetchall()
    user = _one(conn, "SELECT current_user")[0]
    assert events == [(first, "enqueued", None, "available", 0, user, None),
                      (later, "enqueued", None, "scheduled", 0, user, None)]


@pytest.mark.parametrize(("call", "message"), [
    ("pgqueue.enqueue('t', '{}', queue => 'A b')", "queue name 'A b' must match [a-z0-9_-]{1,63}"),
    ("pgqueue.enqueue('t', '[1]')", "args must be a JSON object, not a JSON array"),
    ("pgqueue.enqueue('', '{}')", "task name '' must be 1-255 characters"),
    ("pgqueue.enqueue(NULL, '{}')", "task name NULL must be 1-255 characters"),
    ("pgqueue.enqueue('t', '{}', priority => 40000)", "priority 40000 must be between -32768 and 32767"),
    ("pgqueue.enqueue('t', '{}', max_attempts => 0)", "max_attempts 0 must be an integer from 1 to 10000"),
    ("pgqueue.enqueue('t', '{}', unique_key => '')", "unique_key '' must be a non-empty string"),
    ("pgqueue.enqueue('t', '{}', tags => ARRAY['ok', ''])", "tag '' must be a non-empty string"),
    ("pgqueue.enqueue('t', '{}', tags => ARRAY[NULL::text])", "tag NULL must be a non-empty string"),
    ("pgqueue.enqueue('t', '{}', tags => array_fill('x'::text, ARRAY[33]))", "at most 32 tags, got 33"),
    ("""pgqueue.enqueue('t', jsonb_build_object('blob', repeat('x', 1048576)))""",
     "over the 1048576-byte limit"),
    # An available job at -infinity broke queue_stats, `pgqueue stats` and `pgqueue health`.
    ("pgqueue.enqueue('t', '{}', run_at => '-infinity')", "run_at -infinity must be between 1970-01-01"),
    ("pgqueue.enqueue('t', '{}', run_at => 'infinity')", "run_at infinity must be between 1970-01-01"),
    ("pgqueue.enqueue('t', '{}', run_at => now() + interval '101 years')", "and 100 years from now"),
    ("pgqueue.enqueue('t', '{}', run_at => '0001-01-01 BC')", "must be between 1970-01-01"),
    # As App.enqueue: checked with or without depends_on (it was accepted, and ignored, without).
    ("pgqueue.enqueue('t', '{}', on_dependency_failure => 'x')", "on_dependency_failure 'x' must be cancel or run"),
])
def test_bad_input_is_refused_with_a_message_naming_the_value_and_nothing_is_written(
        conn: Conn, call: str, message: str) -> None:
    with pytest.raises(psycopg.Error) as refused:
        conn.execute(f"SELECT {call}")
    conn.rollback()
    assert refused.value.diag.message_primary == f"pgqueue.enqueue: {message}" or message in str(refused.value)
    assert refused.value.sqlstate in {"22023", "54000"}
    assert _one(conn, "SELECT count(*) FROM pgqueue.jobs")[0] == 0


def test_psql_reports_a_refused_enqueue_as_one_error_line_and_a_failure_status(dsn: str) -> None:
    result = _psql(dsn, "SELECT pgqueue.enqueue('t', '{}', queue => 'Bad Queue')")
    assert result.returncode != 0
    assert "ERROR:  pgqueue.enqueue: queue name 'Bad Queue' must match [a-z0-9_-]{1,63}" in result.stderr


def test_a_live_unique_key_returns_the_existing_job_and_a_finished_one_does_not(conn: Conn) -> None:
    app = App(conn.info.dsn)
    first = _one(conn, "SELECT pgqueue.enqueue('t', '{\"n\": 1}', unique_key => 'k')")[0]
    assert _one(conn, "SELECT pgqueue.enqueue('t', '{\"n\": 2}', unique_key => 'k')")[0] == first
    # Python and SQL share the key space.
    assert app.enqueue(conn, "t", {"n": 3}, unique_key="k") == first
    assert _one(conn, "SELECT count(*) FROM pgqueue.jobs")[0] == 1
    assert _one(conn, "SELECT count(*) FROM pgqueue.job_events")[0] == 1
    conn.execute("UPDATE pgqueue.jobs SET state = 'completed', finished_at = now() WHERE id = %s", [first])
    second = _one(conn, "SELECT pgqueue.enqueue('t', '{}', unique_key => 'k')")[0]
    assert second != first


def test_racing_sql_enqueuers_of_one_unique_key_make_one_job(dsn: str) -> None:
    barrier = threading.Barrier(8)
    ids: list[int] = []

    def enqueue() -> None:
        with psycopg.connect(dsn, autocommit=True) as own:
            barrier.wait()
            ids.append(_one(own, "SELECT pgqueue.enqueue('t', '{}', unique_key => 'race')")[0])

    threads = [threading.Thread(target=enqueue) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(ids) == 8
    assert len(set(ids)) == 1
    with psycopg.connect(dsn) as conn:
        assert _one(conn, "SELECT count(*) FROM pgqueue.jobs")[0] == 1


def test_workers_are_notified_on_commit_only_and_only_for_available_jobs(dsn: str, conn: Conn) -> None:
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        conn.execute("SELECT pgqueue.enqueue('t', '{}', queue => 'rolled-back')")
        conn.rollback()
        conn.execute("SELECT pgqueue.enqueue('t', '{}', queue => 'later', run_at => now() + interval '1 hour')")
        conn.execute("SELECT pgqueue.enqueue('t', '{}', queue => 'now')")
        conn.execute("SELECT pgqueue.enqueue('t', '{}', queue => 'now')")
        conn.commit()
        # A marker sent after the commit arrives after everything the commit sent.
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute("SELECT pg_notify(%s, 'marker')", [NOTIFY_CHANNEL])
        payloads = []
        for notify in listener.notifies(timeout=10):
            payloads.append(notify.payload)
            if notify.payload == "marker":
                break
    assert payloads == ["now", "marker"]


@pytest.fixture
def orders(conn: Conn) -> Conn:
    conn.execute("CREATE TABLE public.orders (id bigserial PRIMARY KEY, email text NOT NULL)")
    conn.execute("""
        CREATE FUNCTION public.orders_enqueue_receipt() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pgqueue.enqueue('send-receipt', jsonb_build_object('order_id', NEW.id, 'email', NEW.email),
                                    queue => 'emails', unique_key => 'receipt:' || NEW.id);
            RETURN NEW;
        END $$""")
    conn.execute("CREATE TRIGGER orders_receipt AFTER INSERT ON public.orders "
                 "FOR EACH ROW EXECUTE FUNCTION public.orders_enqueue_receipt()")
    conn.commit()
    return conn


def test_a_trigger_on_a_business_table_enqueues_with_the_row_and_rolls_back_with_it(dsn: str, orders: Conn) -> None:
    orders.execute("INSERT INTO public.orders (email) VALUES ('gone@example.com')")
    assert _one(orders, "SELECT count(*) FROM pgqueue.jobs")[0] == 1  # visible inside the transaction
    orders.rollback()
    assert _one(orders, "SELECT count(*) FROM pgqueue.jobs")[0] == 0
    assert _one(orders, "SELECT count(*) FROM pgqueue.job_events")[0] == 0

    order_id = _one(orders, "INSERT INTO public.orders (email) VALUES ('a@example.com') RETURNING id")[0]
    orders.commit()
    settings = Settings(dsn=dsn, poll_seconds=0.2, lease_seconds=5, shutdown_grace_seconds=2)
    app = App(dsn, settings=settings)
    sent: list[tuple[int, str]] = []

    @app.task(name="send-receipt", queue="emails")
    def send_receipt(job: Job, order_id: int, email: str) -> str:
        sent.append((order_id, email))
        return "sent"

    Worker(app, queues=["emails"], concurrency=1, settings=settings).run_until_empty()
    assert sent == [(order_id, "a@example.com")]
    assert _one(orders, "SELECT state, result, unique_key FROM pgqueue.jobs") == (
        "completed", "sent", f"receipt:{order_id}")


@pytest.fixture(scope="module")
def logins(pg_server_dsn: str) -> Iterator[Logins]:
    with shipped_role_logins(pg_server_dsn) as made:
        yield made


def test_the_enqueuer_and_admin_roles_may_execute_it_and_the_others_may_not(dsn: str, pg_server_dsn: str,
                                                                             logins: Logins) -> None:
    apply_roles_sql(dsn, pg_server_dsn)
    with psycopg.connect(logins.dsn(dsn, "enqueuer")) as enqueuer:
        job_id = _one(enqueuer, "SELECT pgqueue.enqueue('t', '{}', unique_key => 'k')")[0]
        assert _one(enqueuer, "SELECT pgqueue.enqueue('t', '{}', unique_key => 'k')")[0] == job_id
        enqueuer.commit()
    with psycopg.connect(logins.dsn(dsn, "admin")) as admin:
        admin.execute("SELECT pgqueue.enqueue('t', '{}')")
        admin.commit()
    # The worker's audit policy accepts only the scheduler's enqueues: it is refused up front.
    for role in ("reader", "worker"):
        with psycopg.connect(logins.dsn(dsn, role)) as conn, pytest.raises(
                psycopg.errors.InsufficientPrivilege, match="permission denied for function enqueue"):
            conn.execute("SELECT pgqueue.enqueue('t', '{}')")
    with psycopg.connect(dsn) as owner:
        actors = [row[0] for row in owner.execute("SELECT actor FROM pgqueue.job_events ORDER BY id")]
    assert actors == [logins.names["enqueuer"], logins.names["admin"]]
