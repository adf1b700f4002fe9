"""The App the soak runs under real ``pgqueue worker`` and ``pgqueue scheduler`` processes
(``--app pgqueue._soak.app:app``); its DSN comes from ``PGQUEUE_DSN`` like any user's app.

Every handler first records its execution in ``soak_executions`` on its own autocommit connection,
before doing anything else, so an attempt whose worker is killed or whose ack is lost stays
visible: the books count executions from that table, independently of what pgqueue wrote.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pgqueue
from pgqueue._db.soak import ExecutionLog

WORK = "soak-work"  # succeeds on its first attempt
FLAKY = "soak-flaky"  # fails twice, then succeeds: exercises retry_scheduled
DOOMED = "soak-doomed"  # fails every attempt: ends failed
POISON = "soak-poison"  # misbehaves as the worker's catalogue of poison handlers does: ends failed
TICK = "soak-tick"  # the cron task
SCHEDULE = "soak-every-2s"
CRON = "*/2 * * * * *"
CRON_QUEUE = "soak-cron"
ENQUEUED_TASKS = (WORK, FLAKY, DOOMED, POISON)

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


class UnprintableError(Exception):
    """A poison handler's error whose ``__str__`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("str() of this error raises")


#: What a poison job does, chosen by its number: each once wedged or killed a worker (see
#: tests/e2e/test_poison_handlers.py for the whole catalogue, forks included).
POISON_KINDS = ("result-surrogate", "error-surrogate", "unprintable", "generator-exit", "huge-result",
                "swallow-cancel")


def poison_kind(n: int) -> str:
    return POISON_KINDS[(n // 100) % len(POISON_KINDS)]


@app.task(name=POISON, max_attempts=2, backoff=pgqueue.Backoff.fixed(0.5), timeout=0.5)
async def poison(job: pgqueue.Job, n: int) -> Any:
    await asyncio.to_thread(record_execution, job)
    kind = poison_kind(n)
    if kind == "result-surrogate":
        return {"text": "\ud800"}
    if kind == "error-surrogate":
        raise FlakyError("bad \udfff text")
    if kind == "unprintable":
        raise UnprintableError
    if kind == "generator-exit":
        raise GeneratorExit
    if kind == "huge-result":
        return "x" * (2 * 1024 * 1024)
    # swallow-cancel: ignores the cancellation of its 0.5 s timeout for a few seconds more.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            continue
    return None


@app.task(name=TICK, queue=CRON_QUEUE, max_attempts=10)
def tick(job: pgqueue.Job) -> None:
    record_execution(job)


app.schedule(SCHEDULE, cron=CRON, task=TICK, misfire="once")
