"""The App the soak runs under real ``pgqueue worker`` and ``pgqueue scheduler`` processes
(``--app pgqueue._soak.app:app``); its DSN comes from ``PGQUEUE_DSN`` like any user's app.

Every handler first records its execution in ``soak_executions`` on its own autocommit connection,
before doing anything else, so an attempt whose worker is killed or whose ack is lost stays
visible: the books count executions from that table, independently of what pgqueue wrote.
"""

from __future__ import annotations

import os
import time

import pgqueue
from pgqueue._db.soak import ExecutionLog

WORK = "soak-work"  # succeeds on its first attempt
FLAKY = "soak-flaky"  # fails twice, then succeeds: exercises retry_scheduled
DOOMED = "soak-doomed"  # fails every attempt: ends failed
TICK = "soak-tick"  # the cron task
SCHEDULE = "soak-every-2s"
CRON = "*/2 * * * * *"
CRON_QUEUE = "soak-cron"
ENQUEUED_TASKS = (WORK, FLAKY, DOOMED)

app = pgqueue.App()

_executions = ExecutionLog(lambda: app.dsn)


class FlakyError(Exception):
    """The planned failure of a flaky or doomed soak job."""


def record_execution(job: pgqueue.Job) -> None:
    """One row per execution; retried while the database restarts so the record is never skipped."""
    _executions.record(job.id, job.attempt, os.getpid())


@app.task(name=WORK, max_attempts=10)
def work(job: pgqueue.Job, n: int) -> None:
    record_execution(job)
    # 0-39 ms of "work", fixed per job: a SIGKILL then finds jobs mid-flight, so rescues happen.
    time.sleep((n * 7919 % 40) / 1000)


@app.task(name=FLAKY, max_attempts=10, backoff=pgqueue.Backoff.fixed(0.5))
def flaky(job: pgqueue.Job, n: int) -> None:
    record_execution(job)
    if job.attempt < 3:
        raise FlakyError(f"planned failure of attempt {job.attempt}")


@app.task(name=DOOMED, max_attempts=2, backoff=pgqueue.Backoff.fixed(0.5))
def doomed(job: pgqueue.Job, n: int) -> None:
    record_execution(job)
    raise FlakyError("planned failure of every attempt")


@app.task(name=TICK, queue=CRON_QUEUE, max_attempts=10)
def tick(job: pgqueue.Job) -> None:
    record_execution(job)


app.schedule(SCHEDULE, cron=CRON, task=TICK, misfire="once")
