"""The FastAPI integration: a lifespan-managed worker runs jobs enqueued in a request's
SQLAlchemy session; a failed request leaves neither the order nor its job."""

import pytest
from fastapi.testclient import TestClient

from pgqueue.testing import TestDatabase


@pytest.fixture
def client(pgqueue_db: TestDatabase):
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
