"""Poison handlers: every way a handler is known to have wedged or killed a worker, for the catalogue
test (``tests/e2e/test_poison_handlers.py``) and the soak's poison mix. ``--app poison_app:app``.

Each poison task allows two attempts with no backoff, so its job dead-letters quickly; ``ok`` is the
ordinary job that must still complete afterwards on the same worker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import pgqueue

app = pgqueue.App()

_ONCE = pgqueue.Backoff.fixed(0)


class UnprintableError(Exception):
    """An exception whose ``__str__`` (and ``__repr__``) raise."""

    def __str__(self) -> str:
        raise RuntimeError("str() of this error raises")

    def __repr__(self) -> str:
        raise RuntimeError("repr() of this error raises")


class OddBaseException(BaseException):
    """Not an Exception: escapes ``except Exception`` in naive code."""


@app.task(name="ok")
def ok(job: pgqueue.Job, **_: Any) -> dict[str, int]:
    return {"id": job.id}


@app.task(name="poison-result-surrogate", max_attempts=2, backoff=_ONCE)
def result_surrogate(job: pgqueue.Job) -> dict[str, str]:
    return {"text": "\ud800"}


@app.task(name="poison-error-surrogate", max_attempts=2, backoff=_ONCE)
def error_surrogate(job: pgqueue.Job) -> None:
    raise ValueError("bad \ud800 text")


@app.task(name="poison-progress-surrogate", max_attempts=2, backoff=_ONCE)
def progress_surrogate(job: pgqueue.Job) -> None:
    job.set_progress(50, "note \udfff")
    time.sleep(1)  # a heartbeat tick passes while the note is pending


@app.task(name="poison-progress-surrogate-swallowed", max_attempts=2, backoff=_ONCE)
def progress_surrogate_swallowed(job: pgqueue.Job) -> None:
    with contextlib.suppress(ValueError):
        job.set_progress(50, "note \udfff")
    raise RuntimeError("gave up after a bad progress note")


@app.task(name="poison-unprintable", max_attempts=2, backoff=_ONCE)
def unprintable(job: pgqueue.Job) -> None:
    raise UnprintableError


@app.task(name="poison-generator-exit", max_attempts=2, backoff=_ONCE)
def generator_exit(job: pgqueue.Job) -> None:
    raise GeneratorExit


@app.task(name="poison-async-generator-exit", max_attempts=2, backoff=_ONCE)
async def async_generator_exit(job: pgqueue.Job) -> None:
    raise GeneratorExit


@app.task(name="poison-base-exception", max_attempts=2, backoff=_ONCE)
def base_exception(job: pgqueue.Job) -> None:
    raise OddBaseException("odd")


@app.task(name="poison-huge-result", max_attempts=2, backoff=_ONCE)
def huge_result(job: pgqueue.Job) -> str:
    return "x" * (3 * 1024 * 1024)  # over the result size limit


@app.task(name="poison-swallow-cancel", timeout=1, max_attempts=2, backoff=_ONCE)
async def swallow_cancel(job: pgqueue.Job) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            continue  # refuses to stop


@app.task(name="poison-fork", max_attempts=2, backoff=_ONCE)
def fork(job: pgqueue.Job, pid_file: str) -> None:
    pid = os.fork()
    if pid == 0:  # the child: outlive everyone if allowed
        try:
            time.sleep(600)
        finally:
            os._exit(0)
    Path(pid_file).write_text(str(pid))
    raise RuntimeError("forked a child and failed")
