"""The FastAPI integration: a lifespan-managed worker runs jobs enqueued in a request's
SQLAlchemy session; a failed request leaves neither the order nor its job; the readiness probe
reports a worker that died while the app serves."""

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg import sql
from sqlalchemy.engine import make_url

from pgqueue.testing import TestDatabase

WORKER_END_TIMEOUT = 60.0


@pytest.fixture
def client(pgqueue_db: TestDatabase) -> Iterator[TestClient]:
    from fastapishop.main import create_api, queue

    pgqueue_db.bind(queue)
    with TestClient(create_api()) as client:  # runs the lifespan: the worker starts and stops with it
        yield client


def test_an_order_enqueues_its_confirmation_and_the_lifespan_worker_runs_it(
        client: TestClient, pgqueue_db: TestDatabase) -> None:
    placed = client.post("/orders", json={"email": "a@example.com", "total_cents": 1200})
    assert placed.status_code == 201, placed.text
    order_id, job_id = placed.json()["order_id"], placed.json()["job_id"]

    result = client.get(f"/jobs/{job_id}/result")

    assert result.status_code == 200, result.text
    assert result.json() == {"order_id": order_id, "sent_to": "a@example.com"}
    pgqueue_db.assert_enqueued("send-confirmation", args={"order_id": order_id}, state="completed", count=1)


def test_a_failed_request_rolls_back_the_order_and_its_job(client: TestClient, pgqueue_db: TestDatabase) -> None:
    refused = client.post("/orders", json={"email": "b@example.com", "total_cents": 10**6})
    assert refused.status_code == 402
    pgqueue_db.refute_enqueued("send-confirmation")
    with pgqueue_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)


def worker_task(client: TestClient) -> asyncio.Task[int]:
    """The app's in-process worker task (``api.state.worker`` is its WorkerMonitor)."""
    assert isinstance(client.app, FastAPI)
    task: asyncio.Task[int] = client.app.state.worker.task
    return task


def on_the_app_loop(client: TestClient, step: Callable[[], Awaitable[None]]) -> None:
    assert client.portal is not None, "the client's lifespan is running"
    client.portal.call(step)


def wait_for_the_worker_to_end(client: TestClient) -> None:
    """Wait on the worker's task itself, on the app's event loop (no polling)."""
    task = worker_task(client)

    async def ended() -> None:
        await asyncio.wait_for(asyncio.wait([task]), WORKER_END_TIMEOUT)

    on_the_app_loop(client, ended)


def test_the_readiness_probe_says_ok_while_the_worker_runs(client: TestClient) -> None:
    health = client.get("/healthz")

    assert health.status_code == 200, health.text
    assert health.json() == {"status": "ok", "worker": "running"}


@pytest.fixture
def limited_role(pgqueue_db: TestDatabase) -> Iterator[str]:
    """The DSN of a login role with the grants a worker needs in this database, but allowed
    only 3 sessions: fewer than a worker needs, so the worker's start-up check fails (a
    ConfigurationError) once the app is up, while the shop's requests still work."""
    name = f"shop_{uuid.uuid4().hex[:12]}"
    with pgqueue_db.connect(autocommit=True) as db:
        # Grants in this database only, not sql/roles.sql: its group roles are cluster-wide, and
        # other tests running at the same time create them under a lock of their own.
        role = sql.Identifier(name)
        db.execute(sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 3").format(role))
        for grant in ("GRANT USAGE ON SCHEMA pgqueue TO {}",
                      "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pgqueue TO {}",
                      "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA pgqueue TO {}",
                      "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pgqueue TO {}",
                      "GRANT CREATE, USAGE ON SCHEMA public TO {}"):
            db.execute(sql.SQL(grant).format(role))
    try:
        yield make_url(pgqueue_db.dsn).set(username=name).render_as_string(hide_password=False)
    finally:
        with pgqueue_db.connect(autocommit=True) as db:
            db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [name])
            db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_a_worker_that_dies_while_the_app_serves_is_logged_and_fails_the_readiness_probe(
        limited_role: str, caplog: pytest.LogCaptureFixture) -> None:
    from fastapishop.main import create_api, queue

    caplog.set_level(logging.ERROR, logger="fastapishop")
    as_limited_role = TestDatabase(limited_role)  # the shop and its worker log in as that role
    as_limited_role.bind(queue)
    try:
        with TestClient(create_api()) as client:
            wait_for_the_worker_to_end(client)

            crashes = [r for r in caplog.records if r.name == "fastapishop"]
            health = client.get("/healthz")
            orders = client.post("/orders", json={"email": "c@example.com", "total_cents": 100})
    finally:
        as_limited_role.close()

    # Logged when it happened, with the traceback, while the app was still up.
    assert len(crashes) == 1, caplog.text
    assert "ConfigurationError" in crashes[0].getMessage()
    assert crashes[0].exc_info is not None
    assert health.status_code == 503, health.text
    body = health.json()
    assert (body["status"], body["worker"]) == ("unavailable", "dead"), body
    assert body["reason"].startswith("the worker crashed: ConfigurationError: "), body
    assert "CONNECTION LIMIT 3" in body["reason"], body
    assert orders.status_code == 201, orders.text  # the app kept serving: only the probe tells


def test_a_cancelled_worker_task_fails_the_readiness_probe(client: TestClient) -> None:
    task = worker_task(client)

    async def cancel() -> None:
        task.cancel()

    on_the_app_loop(client, cancel)
    wait_for_the_worker_to_end(client)

    health = client.get("/healthz")

    assert health.status_code == 503, health.text
    assert health.json()["reason"] == "the worker task was cancelled"
