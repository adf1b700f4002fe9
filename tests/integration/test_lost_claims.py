"""A claim that committed but whose reply was lost leaves no job stuck 'running' under a live worker."""

from __future__ import annotations

import threading

import psycopg

from pgqueue import App, Job, Worker
from pgqueue.settings import Settings
from tests.helpers import wait_until


def test_jobs_running_under_a_live_worker_that_does_not_hold_them_are_released_and_run(dsn: str) -> None:
    settings = Settings(dsn=dsn, lease_seconds=1, poll_seconds=0.2, shutdown_grace_seconds=2)
    app = App(dsn, settings=settings)

    @app.task(name="work")
    async def work(job: Job) -> int:
        return job.attempt

    worker = Worker(app, concurrency=4, settings=settings)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
    thread.start()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            wait_until(lambda: conn.execute("SELECT 1 FROM pgqueue.workers WHERE id = %s",
                                            [worker.worker_id]).fetchone(), timeout=10)
            # Exactly what a claim whose reply was lost leaves behind: the job is running under this
            # (live, heartbeating) worker, which never received it.
            # Delayed, so the worker cannot claim it for real before it becomes the fake lost claim.
            job_id = app.enqueue(None, "work", queue="held", delay=3600)
            conn.execute("""
                UPDATE pgqueue.jobs SET state = 'running', attempt = attempt + 1, worker_id = %s,
                       lease_token = gen_random_uuid(), started_at = now()
                WHERE id = %s""", [worker.worker_id, job_id])
            wait_until(lambda: conn.execute("SELECT state FROM pgqueue.jobs WHERE id = %s",
                                            [job_id]).fetchone() == ("completed",), timeout=15)
            events = conn.execute(
                "SELECT event, detail ->> 'reason' FROM pgqueue.job_events WHERE job_id = %s ORDER BY id",
                [job_id]).fetchall()
            attempt = conn.execute("SELECT attempt FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone()
    finally:
        worker.stop()
        thread.join(timeout=15)
    assert ("released", "claim reply lost") in events
    assert events[-1] == ("completed", None)
    assert attempt == (1,), events  # the lost claim's attempt was not counted
