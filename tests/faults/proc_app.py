"""The App of the process- and network-fault tests (``--app tests.faults.proc_app:app``).

Handlers that end their attempt in ways a handler should not: ``os._exit``, ``SystemExit``,
``KeyboardInterrupt``, ``asyncio.CancelledError`` raised by the handler itself (not by the
worker cancelling it). Each records its execution in ``fault_executions`` first (through
``FAULT_RECORD_DSN``, see ``tests.faults.fault_app``), so every attempt stays visible.

Retries use a fixed 0.2 s backoff so a test sees the retry at once.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pgqueue
from tests.faults.fault_app import record_execution

app = pgqueue.App()

QUICK = pgqueue.Backoff.fixed(0.2)
CRASHES: dict[str, type[BaseException]] = {
    "system_exit": SystemExit,
    "keyboard_interrupt": KeyboardInterrupt,
    "cancelled": asyncio.CancelledError,
}


def _crash(job: pgqueue.Job, how: str, until_attempt: int) -> None:
    record_execution(job, how)
    if job.attempt > until_attempt:
        return
    if how == "os_exit":
        os._exit(1)
    raise CRASHES[how](f"handler raised {how} on attempt {job.attempt}")


@app.task(name="crash-sync", backoff=QUICK, max_attempts=5)
def crash_sync(job: pgqueue.Job, how: str, until_attempt: int = 1) -> None:
    """Crashes (``how``) on attempts up to ``until_attempt``, then succeeds."""
    _crash(job, how, until_attempt)


@app.task(name="crash-async", backoff=QUICK, max_attempts=5)
async def crash_async(job: pgqueue.Job, how: str, until_attempt: int = 1) -> None:
    """The async twin, run on the worker's event loop."""
    await asyncio.to_thread(record_execution, job, how)
    if job.attempt <= until_attempt:
        raise CRASHES[how](f"handler raised {how} on attempt {job.attempt}")


@app.task(name="crash-async-timeout", backoff=QUICK, max_attempts=5, timeout=60)
async def crash_async_timeout(job: pgqueue.Job, how: str, until_attempt: int = 1) -> None:
    """Async with a timeout: the executor runs it under ``asyncio.wait_for`` (its own asyncio task)."""
    await asyncio.to_thread(record_execution, job, how)
    if job.attempt <= until_attempt:
        raise CRASHES[how](f"handler raised {how} on attempt {job.attempt}")


@app.task(name="work", backoff=QUICK, max_attempts=20)
def work(job: pgqueue.Job, seconds: float = 0.0, **_payload: Any) -> None:
    """An ordinary job: records its execution, then holds its slot ``seconds``."""
    record_execution(job, "work")
    if seconds:
        time.sleep(seconds)
