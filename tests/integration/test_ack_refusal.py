"""An outcome the database refuses fails only its own job; it never blocks the worker's other acks."""

from __future__ import annotations

import threading

import psycopg
import psycopg.sql
import pytest

from pgqueue import App, Job, JobSpec, Worker
from pgqueue.settings import Settings
from tests.helpers import wait_until


# 22023: a data error (psycopg.DataError). 54000: a program limit (a value too large for jsonb, an
# index row over the btree maximum), which psycopg files under OperationalError, like a lost
# connection: the worker took it for an outage and retried the ack forever, claims paused.
@pytest.mark.parametrize("sqlstate", ["22023", "54000"])
def test_a_refused_outcome_fails_its_job_and_the_rest_of_the_batch_is_written(dsn: str, sqlstate: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Stands in for any value the database refuses (a constraint, a domain, a bad encoding, a
        # size limit): completing a 'cursed' job raises the error.
        conn.execute(psycopg.sql.SQL("""
            CREATE FUNCTION refuse_cursed() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'cursed result' USING ERRCODE = {}; END $$;
            CREATE TRIGGER refuse_cursed BEFORE UPDATE ON pgqueue.jobs FOR EACH ROW
            WHEN (NEW.state = 'completed' AND NEW.task = 'cursed') EXECUTE FUNCTION refuse_cursed();
        """).format(psycopg.sql.Literal(sqlstate)))
    settings = Settings(dsn=dsn, lease_seconds=5, poll_seconds=0.2, shutdown_grace_seconds=2)
    app = App(dsn, settings=settings)

    @app.task(name="fine")
    async def fine(job: Job) -> int:
        return job.id

    @app.task(name="cursed", max_attempts=5)
    async def cursed(job: Job) -> int:
        return job.id

    ids = app.enqueue_many(None, [JobSpec("cursed" if i == 10 else "fine") for i in range(40)])
    worker = Worker(app, concurrency=40, settings=settings)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
    thread.start()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            def settled() -> bool:
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE state IN ('completed', 'failed')) FROM pgqueue.jobs").fetchone()
                return row is not None and row[0] == len(ids)

            wait_until(settled, timeout=20)
            rows = conn.execute("SELECT id, state, last_error FROM pgqueue.jobs ORDER BY id").fetchall()
            later = app.enqueue(None, "fine")
            wait_until(lambda: conn.execute(
                "SELECT state FROM pgqueue.jobs WHERE id = %s", [later]).fetchone() == ("completed",), timeout=10)
    finally:
        worker.stop()
        thread.join(timeout=15)
    by_id = {job_id: (state, error) for job_id, state, error in rows}
    assert by_id[ids[10]][0] == "failed"
    assert by_id[ids[10]][1]["type"] == "OutcomeRejected"
    assert "cursed result" in by_id[ids[10]][1]["message"]
    assert all(by_id[job_id][0] == "completed" for job_id in ids if job_id != ids[10])
