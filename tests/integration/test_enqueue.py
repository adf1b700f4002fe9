"""Enqueueing on the caller's own transaction, over every connection kind pgqueue accepts.

The first suite is parametrised over the connection kinds (psycopg sync/async, also with a
RawCursor or ClientCursor cursor_factory, and SQLAlchemy Session/Connection sync/async): rollback
means the job never existed, commit makes it durable and wakes workers with one NOTIFY per queue,
and pgqueue never ends the caller's transaction. The rest (options, unique keys, typed errors)
runs on a plain psycopg connection.

NOTIFY absence is proven without sleeping: a marker notification sent from another connection
arrives after everything committed before it, so "nothing before the marker" means nothing was sent.
"""

from __future__ import annotations

import asyncio
import math
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from pgqueue import App, JobSpec
from pgqueue._db.jobs import JobStore
from pgqueue._db.notifications import NOTIFY_CHANNEL
from pgqueue.errors import (
    ArgsNotSerializable,
    ConfigurationError,
    DatabaseUnavailable,
    EncryptionKeyMissing,
    EnqueueError,
    InvalidEnqueueOption,
    InvalidPriority,
    InvalidQueueName,
    PayloadTooLarge,
    UnknownTask,
)
from pgqueue.settings import Settings
from tests.helpers import empty_tables, scratch_database, sqlalchemy_form, wait_until

Conn = psycopg.Connection[TupleRow]
T = TypeVar("T")

OWN_WRITE = "INSERT INTO public.app_orders (note) VALUES ('order placed')"
BULK_JOBS = 3000


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_dsn(pg_server_dsn: str, template_db: str) -> Iterator[str]:
    with scratch_database(pg_server_dsn, template_db) as database_dsn:
        with psycopg.connect(database_dsn, autocommit=True) as setup:
            setup.execute("CREATE TABLE public.app_orders (id serial PRIMARY KEY, note text)")
        yield database_dsn


@pytest.fixture
def dsn(module_dsn: str) -> str:
    """Overrides the per-test database: one per module, emptied before each test.

    These tests must commit (NOTIFY, visibility, races), so a rolled-back transaction cannot isolate
    them, and cloning a database per test would cost more than the tests themselves.
    """
    empty_tables(module_dsn, "pgqueue.jobs", "pgqueue.job_events", "public.app_orders")
    return module_dsn


@pytest.fixture
def app(dsn: str) -> App:
    return App(dsn, settings=Settings(dsn=dsn))


@pytest.fixture
def observer(dsn: str) -> Iterator[Conn]:
    """A second, autocommit connection: sees only what the caller committed."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


@dataclass
class Listener:
    """A connection LISTENing on pgqueue's channel, and a way to flush it deterministically."""

    conn: Conn
    marker_conn: Conn
    received: list[str] = field(default_factory=list)

    def _drain(self) -> None:
        self.received.extend(n.payload for n in self.conn.notifies(timeout=0.05))

    def flush(self) -> list[str]:
        """Every notification committed so far (in commit order), consumed; marker excluded."""
        marker = f"marker-{uuid.uuid4().hex}"
        self.marker_conn.execute("SELECT pg_notify(%s, %s)", [NOTIFY_CHANNEL, marker])

        def marker_arrived() -> bool:
            self._drain()
            return marker in self.received

        wait_until(marker_arrived, timeout=10, message="the marker notification")
        index = self.received.index(marker)
        before, self.received = self.received[:index], self.received[index + 1:]
        return before


@pytest.fixture
def listener(dsn: str) -> Iterator[Listener]:
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn, autocommit=True) as marker_conn:
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        yield Listener(conn, marker_conn)


class Caller:
    """The application side: one connection kind, one open transaction, driven synchronously."""

    kind: str

    def enqueue(self, app: App, task: str, args: dict[str, Any] | None = None, **options: Any) -> int:
        raise NotImplementedError

    def enqueue_many(self, app: App, specs: Sequence[JobSpec]) -> list[int]:
        raise NotImplementedError

    def execute(self, statement: str) -> None:
        raise NotImplementedError

    def in_transaction(self) -> bool:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class PsycopgCaller(Caller):
    kind = "psycopg Connection"
    cursor_factory: type[psycopg.Cursor[Any]] = psycopg.Cursor

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, cursor_factory=self.cursor_factory)

    def enqueue(self, app: App, task: str, args: dict[str, Any] | None = None, **options: Any) -> int:
        return app.enqueue(self.conn, task, args, **options)

    def enqueue_many(self, app: App, specs: Sequence[JobSpec]) -> list[int]:
        return app.enqueue_many(self.conn, specs)

    def execute(self, statement: str) -> None:
        self.conn.execute(statement)

    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status == TransactionStatus.INTRANS

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def close(self) -> None:
        self.conn.close()


class _AsyncCaller(Caller):
    """Async kinds run on one event loop kept for the whole test, as an async app would."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)


class PsycopgAsyncCaller(_AsyncCaller):
    kind = "psycopg AsyncConnection"
    cursor_factory: type[psycopg.AsyncCursor[Any]] = psycopg.AsyncCursor

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.conn = self.run(psycopg.AsyncConnection.connect(dsn, cursor_factory=self.cursor_factory))

    def enqueue(self, app: App, task: str, args: dict[str, Any] | None = None, **options: Any) -> int:
        return self.run(app.enqueue_async(self.conn, task, args, **options))

    def enqueue_many(self, app: App, specs: Sequence[JobSpec]) -> list[int]:
        return self.run(app.enqueue_many_async(self.conn, specs))

    def execute(self, statement: str) -> None:
        self.run(self.conn.execute(statement))

    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status == TransactionStatus.INTRANS

    def commit(self) -> None:
        self.run(self.conn.commit())

    def rollback(self) -> None:
        self.run(self.conn.rollback())

    def close(self) -> None:
        self.run(self.conn.close())
        self.runner.close()


# An application picks its connections' cursor class (RawCursor for $1 placeholders; ClientCursor
# behind PgBouncer, and Django's default): pgqueue's statements use %(name)s placeholders, and a
# RawCursor connection refused every one of them ("raw queries require a sequence of parameters").


class RawCursorCaller(PsycopgCaller):
    kind = "psycopg Connection with cursor_factory=RawCursor"
    cursor_factory = psycopg.RawCursor


class ClientCursorCaller(PsycopgCaller):
    kind = "psycopg Connection with cursor_factory=ClientCursor"
    cursor_factory = psycopg.ClientCursor


class AsyncRawCursorCaller(PsycopgAsyncCaller):
    kind = "psycopg AsyncConnection with cursor_factory=AsyncRawCursor"
    cursor_factory = psycopg.AsyncRawCursor


class AsyncClientCursorCaller(PsycopgAsyncCaller):
    kind = "psycopg AsyncConnection with cursor_factory=AsyncClientCursor"
    cursor_factory = psycopg.AsyncClientCursor


def _sqlalchemy_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+psycopg://", 1)


class SessionCaller(Caller):
    kind = "SQLAlchemy Session"

    def __init__(self, dsn: str) -> None:
        self.engine = create_engine(_sqlalchemy_url(dsn), poolclass=NullPool)
        self.session = Session(self.engine)

    def enqueue(self, app: App, task: str, args: dict[str, Any] | None = None, **options: Any) -> int:
        return app.enqueue(self.session, task, args, **options)

    def enqueue_many(self, app: App, specs: Sequence[JobSpec]) -> list[int]:
        return app.enqueue_many(self.session, specs)

    def execute(self, statement: str) -> None:
        self.session.execute(text(statement))

    def in_transaction(self) -> bool:
        return self.session.in_transaction()

    def commit(self) -> None:
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()

    def close(self) -> None:
        self.session.close()
        self.engine.dispose()


class SAConnectionCaller(Caller):
    kind = "SQLAlchemy Connection"

    def __init__(self, dsn: str) -> None:
        self.engine = create_engine(_sqlalchemy_url(dsn), poolclass=NullPool)
        self.conn = self.engine.connect()

    def enqueue(self, app: App, task: str, args: dict[str, Any] | None = None, **options: Any) -> int:
        return app.enqueue(self.conn, task, args, **options)

    def enqueue_many(self, app: App, specs: Sequence[JobSpec]) -> list[int]:
        return app.enqueue_many(self.conn, specs)

    def execute(self, statement: str) -> None:
        self.conn.execute(text(statement))

    def in_transaction(self) -> bool:
        return self.conn.in_transaction()

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()


class AsyncSessionCaller(_AsyncCaller):
    kind = "SQLAlchemy AsyncSession"

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.engine: AsyncEngine = create_async_engine(_sqlalchemy_url(dsn), poolclass=NullPool)
        self.session = AsyncSession(self.engine)

    def enqueue(self, app: App, task: str, args: dict[str, Any] | None = None, **options: Any) -> int:
        return self.run(app.enqueue_async(self.session, task, args, **options))

    def enqueue_many(self, app: App, specs: Sequence[JobSpec]) -> list[int]:
        return self.run(app.enqueue_many_async(self.session, specs))

    def execute(self, statement: str) -> None:
        self.run(self.session.execute(text(statement)))

    def in_transaction(self) -> bool:
        return self.session.in_transaction()

    def commit(self) -> None:
        self.run(self.session.commit())

    def rollback(self) -> None:
        self.run(self.session.rollback())

    def close(self) -> None:
        self.run(self.session.close())
        self.run(self.engine.dispose())
        self.runner.close()


class SAAsyncConnectionCaller(_AsyncCaller):
    kind = "SQLAlchemy AsyncConnection"

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.engine: AsyncEngine = create_async_engine(_sqlalchemy_url(dsn), poolclass=NullPool)
        self.conn: SAAsyncConnection = self.run(self._connect())

    async def _connect(self) -> SAAsyncConnection:
        return await self.engine.connect()

    def enqueue(self, app: App, task: str, args: dict[str, Any] | None = None, **options: Any) -> int:
        return self.run(app.enqueue_async(self.conn, task, args, **options))

    def enqueue_many(self, app: App, specs: Sequence[JobSpec]) -> list[int]:
        return self.run(app.enqueue_many_async(self.conn, specs))

    def execute(self, statement: str) -> None:
        self.run(self.conn.execute(text(statement)))

    def in_transaction(self) -> bool:
        return self.conn.in_transaction()

    def commit(self) -> None:
        self.run(self.conn.commit())

    def rollback(self) -> None:
        self.run(self.conn.rollback())

    def close(self) -> None:
        self.run(self.conn.close())
        self.run(self.engine.dispose())
        self.runner.close()


CALLERS: dict[str, Callable[[str], Caller]] = {
    "psycopg-sync": PsycopgCaller,
    "psycopg-async": PsycopgAsyncCaller,
    "sqlalchemy-session": SessionCaller,
    "sqlalchemy-connection": SAConnectionCaller,
    "sqlalchemy-async-session": AsyncSessionCaller,
    "sqlalchemy-async-connection": SAAsyncConnectionCaller,
    "psycopg-sync-raw-cursor": RawCursorCaller,
    "psycopg-sync-client-cursor": ClientCursorCaller,
    "psycopg-async-raw-cursor": AsyncRawCursorCaller,
    "psycopg-async-client-cursor": AsyncClientCursorCaller,
}


@pytest.fixture(params=list(CALLERS))
def caller(request: pytest.FixtureRequest, dsn: str) -> Iterator[Caller]:
    made = CALLERS[request.param](dsn)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(params=[kind for kind in CALLERS if kind.endswith("-cursor")])
def cursor_caller(request: pytest.FixtureRequest, dsn: str) -> Iterator[Caller]:
    made = CALLERS[request.param](dsn)
    try:
        yield made
    finally:
        made.close()


def count(observer: Conn, query: str, params: Sequence[Any] = ()) -> int:
    row = observer.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def job_count(observer: Conn) -> int:
    return count(observer, "SELECT count(*) FROM pgqueue.jobs")


def event_count(observer: Conn) -> int:
    return count(observer, "SELECT count(*) FROM pgqueue.job_events")


# --- every connection kind ---------------------------------------------------------------------


def test_rolled_back_enqueue_leaves_no_job_no_audit_row_and_no_notification(
        caller: Caller, app: App, observer: Conn, listener: Listener) -> None:
    caller.execute(OWN_WRITE)
    job_id = caller.enqueue(app, "send-email", {"to": "a@example.com"}, queue="emails")

    assert isinstance(job_id, int)
    assert caller.in_transaction(), f"pgqueue ended the caller's transaction on a {caller.kind}"
    caller.rollback()

    assert job_count(observer) == 0
    assert event_count(observer) == 0
    assert count(observer, "SELECT count(*) FROM public.app_orders") == 0
    assert listener.flush() == []


def test_committed_enqueue_is_invisible_until_the_caller_commits_and_notifies_only_then(
        caller: Caller, app: App, observer: Conn, listener: Listener) -> None:
    caller.execute(OWN_WRITE)
    job_id = caller.enqueue(app, "send-email", {"to": "a@example.com"}, queue="emails")

    # pgqueue neither committed nor rolled back: the caller's transaction is open, nothing is visible.
    assert caller.in_transaction(), f"pgqueue ended the caller's transaction on a {caller.kind}"
    assert job_count(observer) == 0
    assert count(observer, "SELECT count(*) FROM public.app_orders") == 0
    assert listener.flush() == [], "a worker was woken before the job was committed"

    caller.commit()

    assert listener.flush() == ["emails"]
    row = observer.execute("SELECT state, queue, task, args FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone()
    assert row == ("available", "emails", "send-email", {"to": "a@example.com"})
    assert observer.execute(
        "SELECT event, to_state FROM pgqueue.job_events WHERE job_id = %s", [job_id]).fetchall() == [
        ("enqueued", "available")]
    assert count(observer, "SELECT count(*) FROM public.app_orders") == 1


def test_enqueue_many_returns_ids_in_input_order_and_notifies_each_queue_once(
        caller: Caller, app: App, observer: Conn, listener: Listener) -> None:
    queues = ["q0", "q1", "q2"]
    specs = [JobSpec("bulk", {"n": n}, queue=queues[n % 3]) for n in range(BULK_JOBS)]

    ids = caller.enqueue_many(app, specs)
    assert caller.in_transaction()
    assert job_count(observer) == 0
    caller.commit()

    assert len(ids) == BULK_JOBS
    assert len(set(ids)) == BULK_JOBS
    stored = {job_id: (n, queue) for job_id, n, queue in observer.execute(
        "SELECT id, (args->>'n')::int, queue FROM pgqueue.jobs").fetchall()}
    assert len(stored) == BULK_JOBS
    assert [stored[job_id] for job_id in ids] == [(n, queues[n % 3]) for n in range(BULK_JOBS)]
    assert count(observer, "SELECT count(*) FROM pgqueue.job_events WHERE event = 'enqueued'") == BULK_JOBS
    assert sorted(listener.flush()) == queues


def test_many_enqueues_in_one_transaction_send_one_notification_per_queue(
        caller: Caller, app: App, listener: Listener) -> None:
    for _ in range(3):
        caller.enqueue(app, "t", {}, queue="a")
    caller.enqueue_many(app, [JobSpec("t", {}, queue="a"), JobSpec("t", {}, queue="b")])
    caller.enqueue(app, "t", {}, queue="later", delay=3600)  # scheduled: no worker to wake yet
    caller.commit()

    assert sorted(listener.flush()) == ["a", "b"]


def test_enqueue_many_of_nothing_returns_no_ids_and_writes_nothing(
        caller: Caller, app: App, observer: Conn, listener: Listener) -> None:
    assert caller.enqueue_many(app, []) == []
    caller.commit()

    assert job_count(observer) == 0
    assert listener.flush() == []


def test_an_invalid_spec_in_enqueue_many_enqueues_nothing(caller: Caller, app: App, observer: Conn) -> None:
    specs = [JobSpec("t", {"n": 1}), JobSpec("t", {"n": math.nan})]

    with pytest.raises(ArgsNotSerializable):
        caller.enqueue_many(app, specs)
    caller.commit()

    assert job_count(observer) == 0


def test_unique_and_dependent_enqueues_run_whatever_the_connections_cursor_factory(
        cursor_caller: Caller, app: App, observer: Conn) -> None:
    first = cursor_caller.enqueue(app, "t", {"n": 1}, unique_key="cursor-key")
    again = cursor_caller.enqueue(app, "t", {"n": 2}, unique_key="cursor-key")
    later = cursor_caller.enqueue(app, "t", {"n": 3}, delay=3600)
    child = cursor_caller.enqueue(app, "t", {"n": 4}, depends_on=[first])
    parent = JobSpec("t", {"n": 5})
    batch = cursor_caller.enqueue_many(app, [parent, JobSpec("t", {"n": 6}, depends_on=[parent, later])])
    cursor_caller.commit()

    assert again == first
    assert [stored(observer, job_id, "state")[0] for job_id in (first, later, child, *batch)] == [
        "available", "scheduled", "waiting", "available", "waiting"]


# --- sync/async mix-ups -----------------------------------------------------------------------


def test_a_sync_connection_on_the_async_api_is_a_configuration_error(app: App, conn: Conn) -> None:
    with pytest.raises(ConfigurationError, match="enqueue"):
        asyncio.run(app.enqueue_async(conn, "t", {}))  # type: ignore[arg-type]  # the mix-up under test


def test_an_async_connection_on_the_sync_api_is_a_configuration_error(app: App, dsn: str) -> None:
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            with pytest.raises(ConfigurationError, match="enqueue_async"):
                app.enqueue(aconn, "t", {})  # type: ignore[arg-type]  # the mix-up under test

    asyncio.run(scenario())


def test_an_async_sqlalchemy_session_on_the_sync_api_is_a_configuration_error(app: App, dsn: str) -> None:
    engine = create_async_engine(_sqlalchemy_url(dsn), poolclass=NullPool)
    session = AsyncSession(engine)
    with pytest.raises(ConfigurationError, match="enqueue_async"):
        app.enqueue(session, "t", {})  # type: ignore[arg-type]  # the mix-up under test


# --- options ----------------------------------------------------------------------------------


def stored(conn: Conn, job_id: int, columns: str) -> tuple[Any, ...]:
    query = sql.SQL("SELECT {} FROM pgqueue.jobs WHERE id = %s").format(sql.SQL(columns))
    row = conn.execute(query, [job_id]).fetchone()
    assert row is not None, f"job {job_id} not found"
    return tuple(row)


@pytest.mark.parametrize(("priority", "expected"), [
    ("critical", 0), ("high", 25), ("normal", 100), ("low", 200), ("HIGH", 25), (" low ", 200),
    (0, 0), (7, 7), (-5, -5), (32767, 32767), ("42", 42), (None, 100),
])
def test_priority_accepts_integers_and_the_names_critical_high_normal_low(
        app: App, conn: Conn, priority: int | str | None, expected: int) -> None:
    # "HIGH", " low ", "42": what an untyped caller (or a config file) may pass, beyond pgqueue.Priority.
    job_id = app.enqueue(conn, "t", {}, priority=priority)  # type: ignore[arg-type]

    assert stored(conn, job_id, "priority") == (expected,)


def test_a_task_default_priority_applies_unless_the_enqueue_overrides_it(app: App, conn: Conn) -> None:
    @app.task(name="urgent", priority="critical", queue="alerts", max_attempts=3)
    def urgent(job: object) -> None: ...

    default_id = urgent.enqueue(conn)
    override_id = app.enqueue(conn, "urgent", {}, priority="low")

    assert stored(conn, default_id, "priority, queue, max_attempts") == (0, "alerts", 3)
    assert stored(conn, override_id, "priority") == (200,)


@pytest.mark.parametrize("priority", ["urgent", "", 1.5, True, 40_000, -40_000, [1]])
def test_an_invalid_priority_raises_invalid_priority_and_writes_nothing(
        app: App, conn: Conn, priority: Any) -> None:
    with pytest.raises(InvalidPriority):
        app.enqueue(conn, "t", {}, priority=priority)

    assert job_count(conn) == 0


@pytest.mark.parametrize("delay", [60, 60.0, timedelta(minutes=1)])
def test_delay_schedules_the_job_that_far_ahead_by_the_database_clock(
        app: App, conn: Conn, delay: float | timedelta) -> None:
    job_id = app.enqueue(conn, "t", {}, delay=delay)

    # Same transaction, same now(): the gap is exactly the delay when run_at comes from the DB clock.
    assert stored(conn, job_id, "state, run_at - now()") == ("scheduled", timedelta(seconds=60))


def test_run_at_in_the_future_schedules_the_job_at_that_instant(app: App, conn: Conn) -> None:
    db_now = stored_now(conn)
    run_at = (db_now + timedelta(hours=2)).astimezone(UTC)

    job_id = app.enqueue(conn, "t", {}, run_at=run_at)

    assert stored(conn, job_id, "state, run_at") == ("scheduled", run_at)


def test_run_at_in_the_past_makes_the_job_available_at_once(app: App, conn: Conn) -> None:
    job_id = app.enqueue(conn, "t", {}, run_at=stored_now(conn) - timedelta(minutes=5))

    assert stored(conn, job_id, "state") == ("available",)


def stored_now(conn: Conn) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("options", [
    {"run_at": datetime(2030, 1, 1, 12, 0)},  # noqa: DTZ001  # naive on purpose
    {"run_at": "2030-01-01T12:00:00+00:00"},
    {"delay": -1},
    {"delay": math.inf},
    {"delay": math.nan},
    {"delay": "60"},
    {"delay": 10, "run_at": datetime(2030, 1, 1, tzinfo=UTC)},
    {"max_attempts": 0},
    {"max_attempts": 1.5},
    {"max_attempts": True},
    {"tags": "billing"},
    {"tags": [""]},
    {"tags": ["a\x00b"]},
    {"tags": ["x" * 129]},
    {"tags": [str(n) for n in range(33)]},
    {"unique_key": ""},
    {"unique_key": "k\x00"},
])
def test_invalid_enqueue_options_raise_a_typed_error_and_write_nothing(
        app: App, conn: Conn, options: dict[str, Any]) -> None:
    with pytest.raises(InvalidEnqueueOption):
        app.enqueue(conn, "t", {}, **options)

    assert job_count(conn) == 0
    assert event_count(conn) == 0


def test_max_attempts_and_tags_are_stored(app: App, conn: Conn) -> None:
    job_id = app.enqueue(conn, "t", {}, max_attempts=3, tags=["facility:001", "billing"])

    assert stored(conn, job_id, "max_attempts, tags, attempt") == (3, ["facility:001", "billing"], 0)


def test_enqueue_many_stores_each_spec_options(app: App, conn: Conn) -> None:
    run_at = (stored_now(conn) + timedelta(hours=1)).astimezone(UTC)
    ids = app.enqueue_many(conn, [
        JobSpec("a", {"n": 1}, priority="high", tags=["x"], max_attempts=2),
        JobSpec("b", {"n": 2}, queue="other", delay=30, unique_key="bulk-key"),
        JobSpec("c", {"n": 3}, run_at=run_at, tags=["y", "z"]),
    ])

    assert stored(conn, ids[0], "task, priority, tags, max_attempts, state") == ("a", 25, ["x"], 2, "available")
    assert stored(conn, ids[1], "task, queue, unique_key, state, run_at - now()") == (
        "b", "other", "bulk-key", "scheduled", timedelta(seconds=30))
    assert stored(conn, ids[2], "state, run_at, tags") == ("scheduled", run_at, ["y", "z"])


def test_args_that_are_literal_backslash_u0000_text_round_trip_through_jsonb(app: App, conn: Conn) -> None:
    job_id = app.enqueue(conn, "t", {"a": "\\u0000", "b": "C:\\\\u0000dir"})

    assert stored(conn, job_id, "args") == ({"a": "\\u0000", "b": "C:\\\\u0000dir"},)


def test_a_task_enqueue_passes_keyword_arguments_as_args(app: App, conn: Conn) -> None:
    @app.task(name="send-email", queue="emails")
    def send_email(job: object, to: str, subject: str) -> None: ...

    job_id = send_email.enqueue(conn, to="a@example.com", subject="hi")

    assert stored(conn, job_id, "task, queue, args") == (
        "send-email", "emails", {"to": "a@example.com", "subject": "hi"})


def test_enqueue_without_a_connection_commits_on_its_own_connection(app: App, observer: Conn) -> None:
    job_id = app.enqueue(None, "t", {"n": 1})

    assert stored(observer, job_id, "state") == ("available",)


def test_enqueue_async_without_a_connection_commits_on_its_own_connection(
        dsn: str, app: App, observer: Conn) -> None:
    # enqueue(None, ...) has always opened its own connection; enqueue_async(None, ...) refused with
    # "cannot enqueue on a NoneType". Its own connection commits at once, whatever the caller's
    # transaction does, while a job enqueued on the caller's connection rolls back with it.
    async def main() -> tuple[int, list[int], int]:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            own = await app.enqueue_async(None, "t", {"n": 1})
            many = await app.enqueue_many_async(None, [JobSpec("t", {"n": 2}), JobSpec("t", {"n": 3})])
            theirs = await app.enqueue_async(aconn, "t", {"n": 4})
            assert aconn.info.transaction_status == TransactionStatus.INTRANS
            await aconn.rollback()
        return own, many, theirs

    own, many, theirs = asyncio.run(main())

    assert [stored(observer, job_id, "state, args") for job_id in [own, *many]] == [
        ("available", {"n": 1}), ("available", {"n": 2}), ("available", {"n": 3})]
    assert count(observer, "SELECT count(*) FROM pgqueue.jobs WHERE id = %s", [theirs]) == 0
    assert job_count(observer) == 3


def test_enqueue_async_without_a_connection_writes_nothing_when_the_job_is_refused(
        app: App, observer: Conn) -> None:
    with pytest.raises(InvalidEnqueueOption, match="delay or run_at"):
        asyncio.run(app.enqueue_async(None, "t", {}, delay=1, run_at=datetime.now(UTC)))
    with pytest.raises(InvalidQueueName):
        asyncio.run(app.enqueue_many_async(None, [JobSpec("t", {}), JobSpec("t", {}, queue="no spaces")]))

    assert job_count(observer) == 0


def test_enqueue_without_a_connection_to_an_unreachable_database_raises_database_unavailable() -> None:
    # The same error from both twins (never psycopg's own OperationalError).
    app = App("postgresql://nobody@127.0.0.1:1/nowhere?connect_timeout=2")

    with pytest.raises(DatabaseUnavailable):
        app.enqueue(None, "t", {})
    with pytest.raises(DatabaseUnavailable):
        asyncio.run(app.enqueue_async(None, "t", {}))


def test_an_app_given_the_sqlalchemy_form_of_its_dsn_enqueues_on_its_own_connection(
        dsn: str, observer: Conn) -> None:
    # The contract accepts postgresql+psycopg:// wherever a DSN is taken; App(dsn=...) passed it to
    # psycopg as it was, so enqueue(None, ...) and app.connect() failed with psycopg's own
    # ProgrammingError ("missing '=' ... in connection info string").
    app = App(sqlalchemy_form(dsn))

    job_id = app.enqueue(None, "t", {"n": 1})
    with app.connect() as own:
        assert stored(own, job_id, "state") == ("available",)
    assert stored(observer, job_id, "state") == ("available",)


def test_require_registered_tasks_refuses_unknown_task_names(dsn: str, conn: Conn) -> None:
    strict = App(dsn, settings=Settings(dsn=dsn), require_registered_tasks=True)

    with pytest.raises(UnknownTask, match="not registered"):
        strict.enqueue(conn, "nobody-handles-this", {})
    assert job_count(conn) == 0


# --- unique_key -------------------------------------------------------------------------------


@pytest.mark.parametrize("live_state", ["scheduled", "available", "running"])
def test_unique_key_returns_the_live_job_instead_of_inserting_another(
        app: App, conn: Conn, live_state: str) -> None:
    first = app.enqueue(conn, "t", {"n": 1}, unique_key="report:42")
    conn.execute("UPDATE pgqueue.jobs SET state = %s WHERE id = %s", [live_state, first])
    events_before = event_count(conn)

    second = app.enqueue(conn, "t", {"n": 2}, unique_key="report:42")

    assert second == first
    assert job_count(conn) == 1
    assert event_count(conn) == events_before  # no 'enqueued' row for the duplicate


@pytest.mark.parametrize("final_state", ["completed", "failed", "cancelled"])
def test_unique_key_enqueues_a_new_job_once_the_first_has_finished(
        app: App, conn: Conn, final_state: str) -> None:
    first = app.enqueue(conn, "t", {}, unique_key="report:42")
    conn.execute("UPDATE pgqueue.jobs SET state = %s, finished_at = now() WHERE id = %s", [final_state, first])

    second = app.enqueue(conn, "t", {}, unique_key="report:42")

    assert second != first
    assert stored(conn, second, "state, unique_key") == ("available", "report:42")


def test_cancelling_a_unique_job_frees_its_key(app: App, conn: Conn) -> None:
    first = app.enqueue(conn, "t", {}, unique_key="k")
    JobStore(conn).cancel_job(first, actor="test")

    assert app.enqueue(conn, "t", {}, unique_key="k") != first


def test_enqueue_many_with_a_repeated_unique_key_gives_every_duplicate_the_same_id(app: App, conn: Conn) -> None:
    live = app.enqueue(conn, "t", {}, unique_key="old")

    ids = app.enqueue_many(conn, [
        JobSpec("t", {"n": 1}, unique_key="new"),
        JobSpec("t", {"n": 2}, unique_key="old"),
        JobSpec("t", {"n": 3}, unique_key="new"),
        JobSpec("t", {"n": 4}),
    ])

    assert len(ids) == 4
    assert ids[1] == live
    assert ids[0] == ids[2]
    assert len({ids[0], ids[3], live}) == 3
    assert job_count(conn) == 3


def test_sixteen_threads_racing_one_unique_key_make_exactly_one_job(app: App, dsn: str, observer: Conn) -> None:
    racers = 16
    barrier = threading.Barrier(racers)
    ids: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def race() -> None:
        try:
            with psycopg.connect(dsn) as own:
                barrier.wait(timeout=30)
                job_id = app.enqueue(own, "t", {}, unique_key="one-and-only")
                own.commit()
            with lock:
                ids.append(job_id)
        except BaseException as exc:  # noqa: BLE001  # reported below, in the test's thread
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert len(ids) == racers
    assert len(set(ids)) == 1, f"racers got different ids: {sorted(set(ids))}"
    assert count(observer, "SELECT count(*) FROM pgqueue.jobs WHERE unique_key = 'one-and-only'") == 1
    assert count(observer, "SELECT count(*) FROM pgqueue.job_events WHERE event = 'enqueued'") == 1


# --- typed errors, nothing written ------------------------------------------------------------


@pytest.mark.parametrize(("args", "error"), [
    ({"x": math.nan}, ArgsNotSerializable),
    ({"x": math.inf}, ArgsNotSerializable),
    ({"x": [-math.inf]}, ArgsNotSerializable),
    ({"x": "nul \x00 here"}, ArgsNotSerializable),
    ({"key\x00": 1}, ArgsNotSerializable),
    (["not", "a", "dict"], ArgsNotSerializable),
    ("a string", ArgsNotSerializable),
    ({"when": datetime(2024, 1, 1, tzinfo=UTC)}, ArgsNotSerializable),
    ({"blob": "x" * 300}, PayloadTooLarge),
])
def test_args_jsonb_would_refuse_raise_a_typed_error_and_write_nothing(
        dsn: str, conn: Conn, args: Any, error: type[EnqueueError]) -> None:
    small = App(dsn, settings=Settings(dsn=dsn, max_payload_bytes=256))

    with pytest.raises(error):
        small.enqueue(conn, "t", args)

    assert_nothing_written_and_connection_usable(conn)


@pytest.mark.parametrize("task", ["", "nul\x00task", None, 42])
def test_a_bad_task_name_raises_a_typed_error_and_writes_nothing(app: App, conn: Conn, task: Any) -> None:
    with pytest.raises(EnqueueError):
        app.enqueue(conn, task, {})

    assert_nothing_written_and_connection_usable(conn)


@pytest.mark.parametrize("queue", ["Bad Queue", "", "emails\n", "x" * 64, "ü"])
def test_a_bad_queue_name_raises_invalid_queue_name_and_writes_nothing(app: App, conn: Conn, queue: str) -> None:
    with pytest.raises(InvalidQueueName, match=r"\[a-z0-9_-\]"):
        app.enqueue(conn, "t", {}, queue=queue)

    assert_nothing_written_and_connection_usable(conn)


def test_encrypt_true_with_no_key_configured_raises_encryption_key_missing_and_writes_nothing(
        app: App, conn: Conn) -> None:
    with pytest.raises(EncryptionKeyMissing, match="PGQUEUE_ENCRYPTION_KEYS"):
        app.enqueue(conn, "t", {"ssn": "123-45-6789"}, encrypt=True)

    assert_nothing_written_and_connection_usable(conn)


def test_an_error_in_enqueue_many_names_the_problem_and_writes_nothing(app: App, conn: Conn) -> None:
    with pytest.raises(InvalidQueueName, match="'Nope'"):
        app.enqueue_many(conn, [JobSpec("t", {}), JobSpec("t", {}, queue="Nope")])

    assert_nothing_written_and_connection_usable(conn)


def assert_nothing_written_and_connection_usable(conn: Conn) -> None:
    # The caller's transaction is not aborted: validation failed before any SQL ran.
    assert conn.info.transaction_status in (TransactionStatus.IDLE, TransactionStatus.INTRANS)
    assert job_count(conn) == 0
    assert event_count(conn) == 0
