"""How the worker's batch outcome statements (complete, fail, release, progress) are planned.

Each finds its batch's jobs by primary key, whatever the statistics say about running jobs. The
statistics are taken while nothing runs (ANALYZE between bursts, as autovacuum often does), and 500
jobs then run on other workers: a plan that walked jobs_running_idx and joined the batch against
every running job cost O(running x batch) per statement (5.9 ms instead of 1.2 ms for 50 jobs).
Both plans a prepared statement can run are checked: the custom one and the cached generic one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

from pgqueue._db.jobs import JOBS, Outcome, _complete_params, _fail_params, _progress_params
from pgqueue._db.notifications import NOTIFY_CHANNEL
from tests.helpers import analyzed_backlog, cached_plan

Conn = psycopg.Connection[TupleRow]
BATCH = 50


@pytest.fixture(scope="module")
def fleet_dsn(pg_server_dsn: str, template_db: str) -> Iterator[str]:
    """20k waiting jobs analyzed while none ran, then 500 running on ten other workers."""
    with analyzed_backlog(pg_server_dsn, template_db, 20_000) as database_dsn:
        with psycopg.connect(database_dsn, autocommit=True) as setup:
            for n in range(10):
                setup.execute(JOBS.claim_jobs_any_queue,
                              {"limit": 50, "worker_id": f"w-other-{n}", "lease_token": str(uuid.uuid4())})
        yield database_dsn


def _claim_batch(conn: Conn) -> tuple[list[int], str]:
    token = str(uuid.uuid4())
    rows = conn.execute(JOBS.claim_jobs_any_queue, {"limit": BATCH, "worker_id": "w-plan", "lease_token": token})
    return [row[0] for row in rows.fetchall()], token


def _params(name: str, ids: list[int], token: str) -> dict[str, Any]:
    if name == "complete_jobs":
        return _complete_params([Outcome(job_id=i, token=token, state="completed", result="null") for i in ids])
    if name == "fail_jobs":
        return _fail_params([Outcome(job_id=i, token=token, state="available", delay=1.0, event="retried",
                                     error='{"type": "Boom"}') for i in ids])
    if name == "release_jobs":
        return {"ids": ids, "tokens": [token] * len(ids), "reason": "plan test", "channel": NOTIFY_CHANNEL}
    assert name == "update_progress"
    return _progress_params([(i, token, 50.0, None, None) for i in ids])


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
@pytest.mark.parametrize("name", ["complete_jobs", "fail_jobs", "release_jobs", "update_progress"])
def test_a_batch_outcome_finds_its_jobs_by_primary_key_not_among_all_running_jobs(
        fleet_dsn: str, name: str, generic: bool) -> None:
    with psycopg.connect(fleet_dsn) as conn:  # one transaction, rolled back: the fleet stays as it is
        ids, token = _claim_batch(conn)
        assert len(ids) == BATCH
        nodes = cached_plan(conn, getattr(JOBS, name), _params(name, ids, token), generic=generic)
        conn.rollback()
    reads = [n for n in nodes if n.get("Relation Name") == "jobs" and n["Node Type"] != "ModifyTable"]
    assert reads, "the plan reads pgqueue.jobs somehow"
    assert all(n.get("Index Name") == "jobs_pkey" for n in reads), [
        (n["Node Type"], n.get("Index Name")) for n in reads]


def test_the_batch_statements_still_touch_only_jobs_running_under_the_token(fleet_dsn: str) -> None:
    # The state comes from the batch now: a job that is no longer running (cancelled meanwhile)
    # must still be left alone, and so must one claimed again under another token.
    with psycopg.connect(fleet_dsn) as conn:
        ids, token = _claim_batch(conn)
        conn.execute("UPDATE pgqueue.jobs SET state = 'cancelled' WHERE id = %s", [ids[0]])
        conn.execute("UPDATE pgqueue.jobs SET lease_token = %s WHERE id = %s", [str(uuid.uuid4()), ids[1]])
        completed = {row[0] for row in conn.execute(JOBS.complete_jobs, _params("complete_jobs", ids, token))}
        conn.rollback()
    assert completed == set(ids[2:])
