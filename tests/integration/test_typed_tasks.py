"""Typed tasks at run time: arguments are checked against the handler when enqueued, and per-call
options go through ``task.options(...)``, never into the handler's args."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

from pgqueue import App, Job, Worker
from pgqueue.errors import ConfigurationError, EnqueueError, InvalidArgs, InvalidEnqueueOption, InvalidPriority
from pgqueue.settings import Settings

Conn = psycopg.Connection[TupleRow]


def _app(dsn: str) -> App:
    return App(dsn, settings=Settings(dsn=dsn, poll_seconds=0.2, lease_seconds=5, shutdown_grace_seconds=2))


def _row(conn: Conn, job_id: int) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT task, queue, priority, args, state, run_at > now() + interval '50 seconds', unique_key, tags,"
        " max_attempts FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None
    return row


def _count(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone()
    assert row is not None
    return int(row[0])


def test_options_reach_the_job_and_never_the_handlers_args(dsn: str, conn: Conn) -> None:
    app = _app(dsn)

    @app.task(name="send-email", queue="emails")
    def send_email(job: Job, to: str, subject: str) -> None: ...

    job_id = send_email.options(priority="high", delay=60, unique_key="welcome:1", tags=["billing"],
                                max_attempts=3).enqueue(conn, to="a@x", subject="hi")
    assert _row(conn, job_id) == (
        "send-email", "emails", 25, {"to": "a@x", "subject": "hi"}, "scheduled", True, "welcome:1", ["billing"], 3)


def test_positional_arguments_are_stored_under_the_handlers_parameter_names(dsn: str, conn: Conn) -> None:
    app = _app(dsn)

    @app.task(name="resize")
    def resize(job: Job, image_id: int, width: int = 100, **extra: Any) -> None: ...

    job_id = resize.enqueue(conn, 7, 640, crop=True)
    assert _row(conn, job_id)[3] == {"image_id": 7, "width": 640, "crop": True}
    assert _row(conn, resize.enqueue(conn, image_id=8))[3] == {"image_id": 8}


def test_args_that_do_not_fit_the_handler_are_refused_at_enqueue_and_nothing_is_written(
        dsn: str, conn: Conn) -> None:
    app = _app(dsn)

    @app.task(name="send-email")
    def send_email(job: Job, to: str, subject: str) -> None: ...

    with pytest.raises(InvalidArgs, match=r"task 'send-email': unexpected 'a', 'zzz'; missing 'subject', 'to'"):
        send_email.enqueue(conn, a="wrong", zzz=3)  # type: ignore[call-arg]
    # The example: options passed as handler args are refused, not stored as args.
    with pytest.raises(InvalidArgs, match=r"unexpected 'delay', 'priority'"):
        send_email.enqueue(conn, to="a@x", subject="hi", delay=60, priority="high")  # type: ignore[call-arg]
    with pytest.raises(InvalidArgs, match="too many positional arguments"):
        send_email.enqueue(conn, "a@x", "hi", "extra")  # type: ignore[call-arg]
    assert issubclass(InvalidArgs, EnqueueError)
    assert issubclass(InvalidArgs, TypeError)
    assert _count(conn) == 0


def test_an_argument_named_like_the_jobs_parameter_is_refused(dsn: str, conn: Conn) -> None:
    app = _app(dsn)

    @app.task(name="loose")
    def loose(job: Job, **payload: Any) -> None: ...

    @app.task(name="strict")
    def strict(job: Job, /, **payload: Any) -> None: ...

    with pytest.raises(InvalidArgs, match="multiple values for argument 'job'"):
        loose.enqueue(conn, job=1)
    assert _row(conn, strict.enqueue(conn, job=1))[3] == {"job": 1}  # positional-only: no clash


def test_a_handler_with_no_parameter_for_the_job_is_refused_where_it_is_declared() -> None:
    # It was accepted, and every enqueue then failed with "too many positional arguments"; one
    # taking it keyword-only enqueued, and each attempt failed with a TypeError.
    app = App()
    with pytest.raises(ConfigurationError, match=r"task 'no-job': its handler must take the job .* first"):
        @app.task(name="no-job")
        def no_job() -> None: ...
    with pytest.raises(ConfigurationError, match=r"task 'kw-job': its handler must take the job"):
        @app.task(name="kw-job")
        def kw_job(*, job: Job) -> None: ...
    assert not app.tasks


def test_an_argument_named_like_a_handlers_first_parameter_says_that_parameter_gets_the_job(
        dsn: str, conn: Conn) -> None:
    app = _app(dsn)

    @app.task(name="resize")
    def resize(image_id: int) -> None: ...  # a handler that forgot the job

    with pytest.raises(InvalidArgs, match=r"unexpected 'image_id' \(the handler's first parameter, 'image_id', "
                                          r"receives the pgqueue.Job\)"):
        resize.enqueue(conn, image_id=7)
    assert _count(conn) == 0


def test_a_handler_taking_star_args_cannot_be_given_positional_extras(dsn: str, conn: Conn) -> None:
    app = _app(dsn)

    @app.task(name="variadic")
    def variadic(job: Job, *values: int) -> None: ...

    with pytest.raises(InvalidArgs, match=r"\*values cannot be stored"):
        variadic.enqueue(conn, 1, 2)
    assert _count(conn) == 0


def test_options_are_validated_when_the_job_is_enqueued(dsn: str, conn: Conn) -> None:
    app = _app(dsn)

    @app.task(name="t")
    def handler(job: Job, n: int) -> None: ...

    with pytest.raises(InvalidPriority, match="'urgent'"):
        handler.options(priority="urgent").enqueue(conn, n=1)  # type: ignore[arg-type]  # an untyped caller's
    with pytest.raises(InvalidEnqueueOption, match="delay or run_at"):
        handler.options(delay=5, run_at=datetime.now(UTC)).enqueue(conn, n=1)
    with pytest.raises(InvalidEnqueueOption, match="not a single string"):
        handler.options(tags="billing")
    assert _count(conn) == 0


def test_options_return_an_immutable_variant_that_later_options_extend(dsn: str, conn: Conn) -> None:
    app = _app(dsn)

    @app.task(name="t", queue="q1")
    def handler(job: Job, n: int) -> None: ...

    high = handler.options(priority="high")
    later = high.options(queue="q2", delay=timedelta(minutes=5))
    with pytest.raises(AttributeError):
        high.bound = later.bound  # type: ignore[misc]
    first, second, plain = high.enqueue(conn, n=1), later.enqueue(conn, n=2), handler.enqueue(conn, n=3)
    assert _row(conn, first)[1:3] == ("q1", 25)
    assert _row(conn, second)[1:3] == ("q2", 25)
    assert _row(conn, second)[4] == "scheduled"
    assert _row(conn, plain)[1:3] == ("q1", 100)


def test_an_option_app_enqueue_does_not_support_yet_is_refused_not_dropped(dsn: str, conn: Conn) -> None:
    import inspect

    app = _app(dsn)

    @app.task(name="t")
    def handler(job: Job, n: int) -> None: ...

    supported = inspect.signature(App.enqueue).parameters  # a supported one is tested with its feature
    if "group" not in supported:
        with pytest.raises(InvalidEnqueueOption, match="group="):
            handler.options(group="tenant-1").enqueue(conn, n=1)
    if "depends_on" not in supported:
        with pytest.raises(InvalidEnqueueOption, match="depends_on="):
            handler.options(depends_on=[1]).enqueue(conn, n=1)
    assert _count(conn) == 0


def test_enqueue_async_checks_arguments_and_applies_options(dsn: str) -> None:
    app = _app(dsn)

    @app.task(name="render")
    async def render(job: Job, report_id: int) -> int:
        return report_id

    async def main() -> int:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            with pytest.raises(InvalidArgs, match="missing 'report_id'"):
                await render.enqueue_async(aconn)  # type: ignore[call-arg]
            job_id = await render.options(priority="low").enqueue_async(aconn, 7)
            await aconn.commit()
            return job_id

    job_id = asyncio.run(main())
    with psycopg.connect(dsn) as conn:
        assert _row(conn, job_id)[2:4] == (200, {"report_id": 7})


def test_typed_enqueue_async_without_a_connection_commits_on_its_own_connection(dsn: str, conn: Conn) -> None:
    app = _app(dsn)

    @app.task(name="render")
    async def render(job: Job, report_id: int) -> int:
        return report_id

    async def main() -> tuple[int, int]:
        return await render.enqueue_async(None, 7), await render.options(priority="low").enqueue_async(None, 8)

    plain, bound = asyncio.run(main())

    assert _row(conn, plain)[2:5] == (100, {"report_id": 7}, "available")
    assert _row(conn, bound)[2:5] == (200, {"report_id": 8}, "available")


def test_a_typed_job_runs_with_its_positional_arguments_as_keywords(dsn: str) -> None:
    app = _app(dsn)
    seen: list[tuple[str, int]] = []

    @app.task(name="greet")
    def greet(job: Job, name: str, times: int = 1) -> str:
        seen.append((name, times))
        return name * times

    with psycopg.connect(dsn) as conn:
        job_id = greet.enqueue(conn, "ab", 2)
        conn.commit()
    Worker(app, concurrency=1).run_until_empty()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT state, result FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone() == (
            "completed", "abab")
    assert seen == [("ab", 2)]


def test_group_and_depends_on_options_reach_the_job(dsn: str, conn: Conn) -> None:
    app = _app(dsn)

    @app.task(name="sync-record", group_concurrency=1)
    def sync_record(job: Job, record: int) -> None: ...

    first = sync_record.options(group="patient:42").enqueue(conn, record=1)
    then = sync_record.options(depends_on=[first]).enqueue(conn, record=2)
    query = "SELECT id, (state, group_key) FROM pgqueue.jobs"
    rows: dict[int, tuple[str, str | None]] = dict(conn.execute(query).fetchall())
    assert rows == {first: ("available", "patient:42"), then: ("waiting", None)}
