"""Two rules a primary failover depends on (docs/operations.md, "Failover"):

- an ack re-sent after its commit's reply was lost counts as done, not as a lost lease;
- leases hold for their full length after the rescuer's session comes back from an outage
  (as after a server restart), since a promoted standby keeps its old start time.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import MutableMapping
from datetime import datetime
from typing import Any

import psycopg
import structlog
from psycopg.rows import TupleRow

from pgqueue import App
from pgqueue._db.jobs import Outcome
from pgqueue._db.server import ServerStore
from pgqueue._db.sessions import AsyncReconnectingSession
from pgqueue._db.workers import WorkerStore
from pgqueue._log import get_logger
from pgqueue._worker.acker import Acker, Tally

Conn = psycopg.Connection[TupleRow]


def _running_job(conn: Conn, worker_id: str = "w-1") -> tuple[int, str]:
    job_id = App(conn.info.dsn).enqueue(conn, "t", {})
    token = str(uuid.uuid4())
    conn.execute("UPDATE pgqueue.jobs SET state = 'running', attempt = 1, lease_token = %s, worker_id = %s, "
                 "started_at = now() WHERE id = %s", [token, worker_id, job_id])
    conn.commit()
    return job_id, token


def _write_twice(dsn: str, batch: list[Outcome]) -> tuple[list[MutableMapping[str, Any]], Tally]:
    tally = Tally()

    async def go() -> None:
        session = AsyncReconnectingSession(dsn, "ack", log=get_logger("test"))
        acker = Acker(session, tally, worker_id="w-1")
        log = get_logger("test")
        try:
            for _ in range(2):  # the second write is the re-send after a lost commit reply
                await session.run(functools.partial(acker._write, batch=batch, log=log))
        finally:
            await session.close()

    with structlog.testing.capture_logs() as logs:
        asyncio.run(go())
    return logs, tally


def test_an_ack_resent_after_its_commit_landed_counts_as_done_not_as_a_lost_lease(conn: Conn) -> None:
    done_id, done_token = _running_job(conn)
    failed_id, failed_token = _running_job(conn)
    batch = [Outcome(job_id=done_id, token=done_token, state="completed", result="1"),
             Outcome(job_id=failed_id, token=failed_token, state="failed", event="failed",
                     error='{"type": "E", "message": "m"}')]
    logs, tally = _write_twice(conn.info.dsn, batch)
    events = [entry["event"] for entry in logs]
    assert "job.lease_lost" not in events, logs
    assert events.count("job.outcome_already_written") == 2, logs
    assert (tally.completed, tally.failed) == (2, 2)  # counted by the write that landed and the re-send
    rows = conn.execute("SELECT event, count(*) FROM pgqueue.job_events WHERE job_id = ANY(%s) "
                        "AND event IN ('completed', 'failed') GROUP BY event ORDER BY event",
                        [[done_id, failed_id]]).fetchall()
    assert rows == [("completed", 1), ("failed", 1)]  # written once


def test_an_ack_for_a_rescued_job_is_still_a_lost_lease(conn: Conn) -> None:
    job_id, token = _running_job(conn)
    # The rescuer took it back (it clears the lease token) and another worker re-ran it.
    conn.execute("UPDATE pgqueue.jobs SET state = 'completed', lease_token = NULL WHERE id = %s", [job_id])
    conn.commit()
    logs, _ = _write_twice(conn.info.dsn, [Outcome(job_id=job_id, token=token, state="completed", result="1")])
    assert [entry["event"] for entry in logs].count("job.lease_lost") == 2, logs


def _expired_worker_with_a_running_job(conn: Conn) -> int:
    # Its lease length is kept shorter than the server's uptime: a lease also holds for its length
    # after the server started, so on a server started seconds ago (the embedded one, at the start of
    # a test run) a 10 s lease was never rescued, whatever the test meant to show.
    conn.execute("INSERT INTO pgqueue.workers (id, hostname, pid, queues, concurrency, heartbeat_at, "
                 "lease_expires_at) "
                 "SELECT 'w-1', 'h', 1, '{}', 1, now() - interval '10 s' - lease, now() - interval '10 s' "
                 "FROM (SELECT LEAST(interval '10 s', (now() - pg_postmaster_start_time()) / 2) AS lease) AS l")
    job_id, _ = _running_job(conn)
    return job_id


def test_leases_hold_for_their_length_after_the_rescuers_session_recovered(conn: Conn) -> None:
    job_id = _expired_worker_with_a_running_job(conn)
    store = WorkerStore(conn)
    recovered_at: datetime = ServerStore(conn).now()
    # The leader just came back from an outage (a failover): the worker may be reconnecting too.
    assert store.rescue_jobs(recovered_at=recovered_at) == []
    conn.commit()
    # Without a recent outage the expired lease is rescued as before.
    assert store.rescue_jobs() == [(job_id, "available")]
    conn.commit()
