"""Run one job and turn what happened into an :class:`Outcome`: completed, retried or failed.

The executor never writes the outcome itself (the worker's acker batches them), except for
transactional tasks, whose completion must commit in the handler's own transaction.
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Executor
from contextvars import copy_context
from typing import Any

import structlog

from pgqueue._db.jobs import Outcome
from pgqueue._log import get_logger
from pgqueue._payload import DEFAULT_MAX_RESULT_BYTES, ResultNotSerializable, encode_json, encode_result
from pgqueue._tracing import take_carrier
from pgqueue._worker.payloads import PayloadSealer
from pgqueue.errors import DecryptionError, EncryptionKeyMissing
from pgqueue.jobs import Discard, Job, Retry, Snooze
from pgqueue.tasks import Task

_TRACEBACK_LIMIT = 8000
# How long an async handler that overran its timeout gets to obey the cancellation before the
# attempt ends without it (its coroutine is left running, unawaited).
_CANCEL_GRACE = 1.0
_MAX_RETRY_DELAY = 100 * 365 * 86400.0  # a century: far beyond any sensible retry, far within timestamptz


class JobTimeout(Exception):
    """The attempt ran longer than the task's timeout."""


class TaskNotRegistered(Exception):
    """The job's task name is not registered with the worker's app."""


class InvalidArgs(Exception):
    """The job's args do not match the handler's signature: retrying cannot help."""


class LeaseLost(Exception):
    """The job's claim was rescued and handed to another worker before this one finished."""


# What a handler's own code may raise that is not an Exception: sys.exit() deep in a library, an
# interrupt it raised, a CancelledError it raised (not the worker cancelling it). Each is a crashed
# attempt, retried with the task's backoff like a handler that killed its process with os._exit
# (the lease rescue retries that one), whatever retry_on says; discard_on can still name them.
CRASHES: tuple[type[BaseException], ...] = (SystemExit, KeyboardInterrupt, asyncio.CancelledError)


class _HandlerCrashed(Exception):
    """Carries a handler's SystemExit/KeyboardInterrupt/CancelledError out of the asyncio task it ran in.

    asyncio re-raises SystemExit and KeyboardInterrupt from any task straight out of the event loop
    (``asyncio.wait_for`` runs a handler with a timeout in a task of its own), which stopped the whole
    worker; as an ordinary exception it reaches the executor's catch-all like any other error.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(type(original).__name__)
        self.original = original


class _Overran(Exception):
    """The handler ran past its task's timeout. Not a TimeoutError: that is what a handler's own
    network call raises (socket.timeout, asyncio.TimeoutError), an error of its own to retry."""


def describe_exception(exc: BaseException) -> str:
    """``str(exc)``, or what can be said of it when its ``__str__`` raises (a poison handler's error
    must still become a failed attempt, never an error in the worker itself)."""
    try:
        return str(exc)
    except BaseException as failure:  # noqa: BLE001 - whatever __str__ raises, the attempt must still end
        return f"<{type(exc).__name__}: str() raised {type(failure).__name__}>"


def error_json(exc: BaseException) -> str:
    try:
        text = "".join(traceback.format_exception(exc))
    except BaseException as failure:  # noqa: BLE001 - a traceback that cannot be rendered is left out
        text = f"<traceback unavailable: {type(failure).__name__}>"
    # jsonb refuses \u0000 and PostgreSQL lone surrogates; one outcome it refuses would fail every
    # ack batch it is part of (encode_json replaces both).
    return encode_json({
        "type": type(exc).__name__,
        "message": describe_exception(exc)[:2000],
        "traceback": text[-_TRACEBACK_LIMIT:],
    })


def failure_outcome(job: Job, task: Task[..., Any] | None, exc: BaseException) -> Outcome:
    """Decide retry or dead-letter for an attempt that raised ``exc``."""
    def dead(event: str) -> Outcome:
        return Outcome(job_id=job.id, token=job.lease_token, state="failed", event=event, error=error_json(exc))

    if isinstance(exc, Discard):
        return dead("discarded")
    if isinstance(exc, Snooze):
        # Not a failure: no attempt is used (fail_jobs hands it back) and no error is recorded.
        delay = min(exc.delay, _MAX_RETRY_DELAY)
        return Outcome(job_id=job.id, token=job.lease_token, state="scheduled" if delay > 0 else "available",
                       delay=delay, event="snoozed")
    # A transactional handler's bad result surfaces here (its completion raised it): not worth a retry.
    if task is None or isinstance(exc, TaskNotRegistered | ResultNotSerializable):
        return dead("failed")
    if isinstance(exc, Retry):
        delay = exc.delay
    elif isinstance(exc, task.discard_on) or not isinstance(exc, (*task.retry_on, *CRASHES)):
        return dead("discarded")
    else:
        delay = task.backoff.delay(job.attempt)
    if job.attempt >= job.max_attempts:
        return dead("failed")
    # now() + delay must stay a timestamp PostgreSQL can store (Retry(delay=inf), a huge backoff):
    # one outcome it refuses would fail every ack batch it is part of, over and over.
    delay = min(delay, _MAX_RETRY_DELAY)
    return Outcome(job_id=job.id, token=job.lease_token, state="scheduled" if delay > 0 else "available",
                   delay=delay, event="retry_scheduled", error=error_json(exc))


def _traced_outcome(outcome: Outcome | None, cancelled: bool) -> tuple[str, str | None]:
    """(outcome, error type) for a job's span: completed, retry, failed, discarded, snoozed or cancelled."""
    if cancelled:
        return "cancelled", None  # whatever the attempt produced is refused: the job is cancelled
    if outcome is not None and outcome.event == "snoozed":
        return "snoozed", None  # asked to run later, using no attempt: not a failure
    if outcome is None or outcome.state == "completed":
        return "completed", None  # None: a transactional handler wrote its completion itself
    error_type = json.loads(outcome.error).get("type") if outcome.error else None
    return ("retry" if outcome.state in ("scheduled", "available") else outcome.event), error_type


class JobRunner:
    """Runs handlers: async ones on the event loop, sync ones in a thread pool.

    A sync handler that overruns its timeout cannot be stopped (Python threads cannot be
    killed), so its thread is abandoned and the slot is freed; ``threads_factory`` supplies a
    fresh pool when abandoned threads would otherwise starve the other slots.
    """

    def __init__(self, threads_factory: Callable[[], Executor], headroom: int,
                 transactional: Callable[[Task[..., Any], Job, Executor], Any], sealer: PayloadSealer,
                 max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> None:
        self._sealer = sealer
        self._max_result_bytes = max_result_bytes
        self._threads_factory = threads_factory
        self._threads = threads_factory()
        self._headroom = headroom
        self._abandoned = 0
        self._run_transactional = transactional
        self.abandoned_total = 0
        # Bound once per worker, then bound again per job: binding a fresh logger from structlog's
        # configuration for every job cost more than a no-op job's handler (an app that
        # reconfigures structlog after its worker started keeps the old configuration here).
        self._log: Any = None

    def shutdown(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    def _abandon_thread(self) -> None:
        self._abandoned += 1
        self.abandoned_total += 1
        if self._abandoned >= self._headroom:
            old = self._threads
            self._threads = self._threads_factory()
            old.shutdown(wait=False)
            self._abandoned = 0

    async def _contained(self, task: Task[..., Any], job: Job) -> Any:
        try:
            return await self._call(task, job)
        except _HandlerCrashed:
            raise
        except (SystemExit, KeyboardInterrupt, GeneratorExit) as exc:
            raise _HandlerCrashed(exc) from exc
        except asyncio.CancelledError as exc:
            if _current_task_cancelling():
                raise  # the worker cancelled it (timeout, hard stop): not the handler's doing
            raise _HandlerCrashed(exc) from exc

    async def _bounded(self, task: Task[..., Any], job: Job, limit: float, log: Any) -> Any:
        """Run the handler for up to ``limit`` seconds; raise _Overran when it overruns, even when it
        swallows the CancelledError that should stop it (``asyncio.wait_for`` would wait for it
        forever, and the job would never end). Such a handler is left running, unawaited."""
        inner = asyncio.ensure_future(self._contained(task, job))
        try:
            done, _ = await asyncio.wait({inner}, timeout=limit)
        except asyncio.CancelledError:
            inner.cancel()  # the worker is stopping hard: the handler goes with it
            raise
        if inner in done:
            return inner.result()
        inner.cancel()
        done, _ = await asyncio.wait({inner}, timeout=_CANCEL_GRACE)
        if not done:
            log.warning("job.handler_ignored_cancel", grace_s=_CANCEL_GRACE)
        # Whatever it ends with is no longer anyone's outcome; retrieve it so asyncio does not log it.
        inner.add_done_callback(_forget)
        raise _Overran

    async def _call(self, task: Task[..., Any], job: Job) -> Any:
        if task.transactional:
            return await self._run_transactional(task, job, self._threads)
        if task.is_async:
            return await task.fn(job, **job.args)
        loop = asyncio.get_running_loop()
        context = copy_context()

        def call() -> Any:
            try:
                return context.run(task.fn, job, **job.args)
            except Exception:
                raise
            except BaseException as exc:
                # Not an Exception (GeneratorExit, SystemExit, a BaseException of its own): raised
                # through the future into this coroutine, GeneratorExit closed the coroutine itself
                # and the attempt never got an outcome (it ran again and again, uncounted).
                raise _HandlerCrashed(exc) from exc

        return await loop.run_in_executor(self._threads, call)

    async def run(self, task: Task[..., Any] | None, job: Job) -> Outcome | None:
        """Run ``job``; return its outcome, or None when a transactional handler already wrote it.

        An encrypted job's args are decrypted first; one this worker cannot decrypt fails at once
        with an error naming the key (no attempt is spent on retries that would fail the same way,
        and the ciphertext stays for a `pgqueue jobs retry` once the key is configured).
        """
        try:
            self._sealer.open_args(job, task)
        except (DecryptionError, EncryptionKeyMissing) as exc:
            get_logger("pgqueue.worker", job_id=job.id, task=job.task, queue=job.queue, attempt=job.attempt).error(
                "job.failed", error_type=type(exc).__name__, reason="cannot decrypt")
            # Its own message names a key id and the fix, never the payload: stored in plaintext.
            message = str(exc) if isinstance(exc, EncryptionKeyMissing) else f"{exc} (`pgqueue jobs retry {job.id}`)"
            return Outcome(job_id=job.id, token=job.lease_token, state="failed", event="failed",
                           error=encode_json({"type": type(exc).__name__, "message": message}))
        carrier = take_carrier(job)  # always: a traced producer's jobs must fit untraced handlers too
        tracing = task.app.tracing if task is not None else None
        if tracing is None:
            outcome = await self._run(task, job)
        else:
            with tracing.job_span(job, carrier) as span:
                outcome = await self._run(task, job)
                span.set_outcome(*_traced_outcome(outcome, job.cancelled))
        if job.cancelled:
            # The job is already cancelled in the database (with its audit row): whatever the
            # attempt produced would be refused, and a transactional handler's writes rolled back.
            get_logger("pgqueue.worker", job_id=job.id, task=job.task, queue=job.queue,
                       attempt=job.attempt).info("job.cancelled")
            return None
        return None if outcome is None else self._sealer.seal(job, task, outcome)

    async def _run(self, task: Task[..., Any] | None, job: Job) -> Outcome | None:
        if self._log is None:
            self._log = get_logger("pgqueue.worker")
        log = self._log.bind(job_id=job.id, task=job.task, queue=job.queue, attempt=job.attempt)
        # Each job runs in its own asyncio task (its own context), and sync handlers get a copy of
        # it in their thread: the handler's own structlog calls carry the job's context too.
        structlog.contextvars.bind_contextvars(job_id=job.id, task=job.task, queue=job.queue, attempt=job.attempt)
        started = time.monotonic()
        if task is None:
            exc: BaseException = TaskNotRegistered(
                f"task {job.task!r} is not registered with this worker's app; "
                "the job is kept as failed for inspection and `pgqueue jobs retry`")
            log.error("job.failed", error_type=type(exc).__name__, reason="task not registered")
            return failure_outcome(job, None, exc)
        try:
            task.check_args(job, job.args)
        except TypeError as exc:
            error = InvalidArgs(f"args do not fit {job.task!r}: {exc}")
            log.error("job.failed", error_type="InvalidArgs")
            return failure_outcome(job, None, error)
        try:
            if task.timeout is not None:
                result = await self._bounded(task, job, task.timeout, log)
            else:
                result = await self._contained(task, job)
        except _Overran:
            if not task.is_async:
                self._abandon_thread()
            outcome = failure_outcome(job, task, JobTimeout(f"attempt exceeded the {task.timeout:g}s timeout"))
            self._log_outcome(log, job, task, outcome, started, "JobTimeout")
            return outcome
        except _HandlerCrashed as crashed:
            outcome = failure_outcome(job, task, crashed.original)
            self._log_outcome(log, job, task, outcome, started, type(crashed.original).__name__)
            return outcome
        except LeaseLost:
            log.warning("job.lease_lost", duration_ms=round((time.monotonic() - started) * 1000, 1))
            return None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if job.cancelled and current is not None and current.cancelling():
                current.uncancel()  # an operator cancelled the job: the attempt ends here, quietly
                return None
            if _current_task_cancelling():
                raise  # the worker itself is shutting down hard
            outcome = failure_outcome(job, task, asyncio.CancelledError("handler raised CancelledError"))
            self._log_outcome(log, job, task, outcome, started, "CancelledError")
            return outcome
        # The one place every handler error lands: whatever a handler raises (including
        # SystemExit and KeyboardInterrupt from its own code) is an outcome, never a crash.
        except BaseException as exc:  # noqa: BLE001
            outcome = failure_outcome(job, task, exc)
            self._log_outcome(log, job, task, outcome, started, type(exc).__name__)
            return outcome
        if task.transactional:
            log.info("job.completed", duration_ms=round((time.monotonic() - started) * 1000, 1))
            return None
        try:
            result_text = encode_result(result, self._max_result_bytes)
        except ValueError as exc:
            # Retrying would run the side effects again only to produce the same bad result.
            outcome = Outcome(job_id=job.id, token=job.lease_token, state="failed", event="failed",
                              error=error_json(exc))
            self._log_outcome(log, job, task, outcome, started, type(exc).__name__)
            return outcome
        log.info("job.completed", duration_ms=round((time.monotonic() - started) * 1000, 1))
        return Outcome(job_id=job.id, token=job.lease_token, state="completed", result=result_text)

    def _log_outcome(self, log: Any, job: Job, task: Task[..., Any], outcome: Outcome, started: float,
                     error_type: str) -> None:
        if job.cancelled:
            return  # the attempt ended because it was cancelled: run() logs job.cancelled instead
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        fields: dict[str, Any] = {"error_type": error_type, "duration_ms": duration_ms}
        if self._sealer.must_seal(job, task):
            fields["error"] = "(redacted: encrypted job)"
        if outcome.event == "snoozed":
            log.info("job.snoozed", snooze_s=round(outcome.delay, 3), duration_ms=duration_ms)
        elif outcome.state == "failed":
            log.warning("job.failed" if outcome.event == "failed" else "job.discarded", **fields)
        else:
            log.info("job.retry_scheduled", retry_in_s=round(outcome.delay, 3), **fields)


def _forget(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
