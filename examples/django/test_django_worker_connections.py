"""The Django connections of the manage.py worker, job after job: like a request, each handler runs
between two close_old_connections() in the thread of its ORM calls (a worker thread for a sync
handler, asgiref's shared thread for an async one using sync_to_async), so a connection that died
is replaced and CONN_MAX_AGE applies."""

import asyncio
from collections.abc import Iterator
from typing import Any, NamedTuple

import psycopg
import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.db import connection, connections

import pgqueue
from pgqueue.contrib.django import database_dsn
from pgqueue.errors import JobFailed
from pgqueue.testing import TestDatabase

jobs = pgqueue.App()


class Run(NamedTuple):
    """An ORM job as it ran (the worker runs in the test's process)."""

    pid: int  # its Django connection's backend
    django: Any  # the DatabaseWrapper of its thread, Django's `connection` there


runs: list[Run] = []
# Set by the concurrency test: the events its two async jobs pass each other.
events: dict[str, asyncio.Event] = {}


def _orders_and_backend_pid() -> int:
    from djangoshop.models import Order

    Order.objects.count()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        [pid] = cursor.fetchone()
    runs.append(Run(pid, connections["default"]))
    return int(pid)


@jobs.task(name="orm-sync", max_attempts=1)
def orm_sync(job: pgqueue.Job) -> int:
    return _orders_and_backend_pid()


@jobs.task(name="orm-async", max_attempts=1)
async def orm_async(job: pgqueue.Job) -> int:
    return await sync_to_async(_orders_and_backend_pid)()


@jobs.task(name="terminate-last-backend", max_attempts=1)
def terminate_last_backend(job: pgqueue.Job) -> bool:
    """What a DBA or a failover does to the last ORM job's connection, from a session of its own."""
    with psycopg.connect(database_dsn(), autocommit=True) as admin:
        row = admin.execute("SELECT pg_terminate_backend(%s, 10000)", [runs[-1].pid]).fetchone()
    return bool(row and row[0])  # with a timeout, it returns once the backend has exited


def _drop_own_connection() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")


@jobs.task(name="drop-sync", max_attempts=1)
def drop_sync(job: pgqueue.Job) -> None:
    _drop_own_connection()


@jobs.task(name="drop-async", max_attempts=1)
async def drop_async(job: pgqueue.Job) -> None:
    await sync_to_async(_drop_own_connection)()


@jobs.task(name="iterate-orders", max_attempts=1)
async def iterate_orders(job: pgqueue.Job) -> int:
    from djangoshop.models import Order

    seen = 0
    # chunk_size=1: a server-side cursor, fetched from in one sync_to_async call per order.
    async for _ in Order.objects.aiterator(chunk_size=1):
        seen += 1
        if seen == 1:
            events["iterating"].set()
            await asyncio.wait_for(events["other_done"].wait(), 30)
    return seen


@jobs.task(name="orm-while-iterating", max_attempts=1)
async def orm_while_iterating(job: pgqueue.Job) -> int:
    await asyncio.wait_for(events["iterating"].wait(), 30)
    pid = await sync_to_async(_orders_and_backend_pid)()
    # Its job ends right away: the cleanup after it is queued to asgiref's thread before the
    # iteration (woken by this event) asks that thread for its next order.
    events["other_done"].set()
    return pid


ORM = {"sync": orm_sync, "async": orm_async}
DROP = {"sync": drop_sync, "async": drop_async}


def _close_django_connections() -> None:
    """Close the Django connections of this thread and of asgiref's shared thread (which outlives
    each worker), so that a test starts with none and its settings apply to the next one."""
    connections.close_all()
    asyncio.run(sync_to_async(connections.close_all)())


@pytest.fixture
def db_settings(shop: TestDatabase) -> Iterator[dict[str, Any]]:
    """Django's ``default`` database settings, for the test to change (restored afterwards); every
    thread's connection reads them when it connects."""
    settings = connections.settings["default"]
    saved = dict(settings)
    shop.bind(jobs)
    runs.clear()
    _close_django_connections()
    yield settings
    settings.clear()
    settings.update(saved)
    _close_django_connections()


def run_worker(concurrency: int = 1) -> None:
    call_command("pgqueue_worker", app=f"{__name__}:jobs", concurrency=concurrency, until_empty=True, verbosity=0)


@pytest.mark.parametrize("handler", ["sync", "async"])
def test_a_django_connection_terminated_between_jobs_is_replaced(
        shop: TestDatabase, db_settings: dict[str, Any], handler: str) -> None:
    # Persistent connections, health-checked before their first use in each job (as in each
    # request): the one killed while idle is found dead before the second job's first query. With
    # CONN_MAX_AGE 0 (Django's default) it would already be closed after the first job.
    db_settings.update(CONN_MAX_AGE=None, CONN_HEALTH_CHECKS=True)
    first = ORM[handler].options(priority=0).enqueue(None)
    terminate = terminate_last_backend.options(priority=1).enqueue(None)
    second = ORM[handler].options(priority=2).enqueue(None)

    run_worker()  # one slot: the three jobs one after the other, in the order enqueued

    assert jobs.result(None, terminate, timeout=5) is True
    # A failed job's result raises JobFailed, with the handler's error.
    assert jobs.result(None, second, timeout=5) != jobs.result(None, first, timeout=5)


@pytest.mark.parametrize("handler", ["sync", "async"])
def test_a_django_connection_that_died_in_a_job_is_replaced_for_the_next(
        shop: TestDatabase, db_settings: dict[str, Any], handler: str) -> None:
    db_settings.update(CONN_MAX_AGE=None)  # persistent: only its error gets it closed
    drop = DROP[handler].options(priority=0).enqueue(None)
    count = ORM[handler].options(priority=1).enqueue(None)

    run_worker()

    with pytest.raises(JobFailed) as dropped:
        jobs.result(None, drop, timeout=5)
    assert dropped.value.error_type == "OperationalError"  # its own query lost the connection
    assert jobs.result(None, count, timeout=5) == runs[-1].pid


@pytest.mark.parametrize("handler", ["sync", "async"])
@pytest.mark.parametrize(("max_age", "kept"), [(0, False), (None, True), (3600, True)])
def test_conn_max_age_applies_between_jobs(shop: TestDatabase, db_settings: dict[str, Any], handler: str,
                                           max_age: int | None, kept: bool) -> None:
    db_settings.update(CONN_MAX_AGE=max_age)
    ORM[handler].options(priority=0).enqueue(None)
    ORM[handler].options(priority=1).enqueue(None)

    run_worker()

    first, second = runs
    # A thread's Django connection after its last job: closed when too old, else kept open.
    assert (first.django.connection is not None) is kept
    if handler == "async":
        # Both ran in asgiref's one thread: the second job found the first one's connection
        # open, or had to open another. (A sync job may run in any idle job thread.)
        assert (second.pid == first.pid) is kept


def test_an_async_job_ending_leaves_the_connection_of_one_still_running(
        shop: TestDatabase, db_settings: dict[str, Any]) -> None:
    from djangoshop.models import Order

    # CONN_MAX_AGE 0 (Django's default): each connection is already too old when its job ends. The
    # iteration's server-side cursor lives on asgiref's shared connection, between its calls.
    db_settings.update(CONN_MAX_AGE=0)
    for total in (1, 2, 3):
        Order.objects.create(email="iterate@example.com", total_cents=total)
    events.update(iterating=asyncio.Event(), other_done=asyncio.Event())
    iterate = iterate_orders.enqueue(None)
    other = orm_while_iterating.enqueue(None)

    run_worker(concurrency=2)

    assert jobs.result(None, other, timeout=5) == runs[-1].pid
    assert jobs.result(None, iterate, timeout=5) == Order.objects.count()
    # The last job out applied CONN_MAX_AGE: asgiref's thread has no open connection left.
    assert asyncio.run(sync_to_async(lambda: connection.connection is None)())
