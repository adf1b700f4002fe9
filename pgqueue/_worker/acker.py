"""The acker: writes finished jobs' outcomes in batches (group commit) on the worker's ack session.

While one batch is being written, finished jobs accumulate for the next, so a busy worker writes
many outcomes per round trip and an idle one writes at once. Outcomes are fenced by their lease
token: one whose claim was rescued (or whose job was cancelled) meanwhile is refused, never
written over someone else's.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgqueue._db.errors import DATABASE_ERRORS, first_line, refused
from pgqueue._db.jobs import AsyncJobStore, Outcome
from pgqueue._db.sessions import AsyncReconnectingSession, capped_backoff
from pgqueue._log import get_logger
from pgqueue._payload import encode_json

if TYPE_CHECKING:
    from pgqueue._db.types import AsyncPsycopgConnection
    from pgqueue.jobs import Job

_CLOSE_WAIT = 10.0


#: Called once per outcome written: (queue, task, event, run seconds). ``event`` is the audit
#: event the outcome wrote (completed, retry_scheduled, failed, discarded). Runs on the event loop
#: after the batch's statement: it must be cheap (Prometheus counters), never a database call.
OutcomeObserver = Callable[[str, str, str, float | None], None]


def described(jobs: Sequence[Job], only: Collection[int] | None = None) -> list[dict[str, Any]]:
    """``jobs`` (those whose id is in ``only``, when given) for a log line: id, task and queue,
    never args or results."""
    return [{"job_id": job.id, "task": job.task, "queue": job.queue}
            for job in sorted(jobs, key=lambda job: job.id) if only is None or job.id in only]


@dataclass
class Tally:
    """Attempts this worker finished: completed, and failed for good (retries are not counted)."""

    completed: int = 0
    failed: int = 0


class Acker:
    """Batches of outcomes, written by :meth:`run` until :meth:`close`.

    Args:
        session: the worker's ack session.
        tally: counts what was written.
        on_written: called after each batch that reached the database.
        observer: told about each outcome written (metrics); None: nothing is kept for it.
    """

    def __init__(self, session: AsyncReconnectingSession, tally: Tally, *, worker_id: str,
                 on_written: Callable[[], None] | None = None, observer: OutcomeObserver | None = None) -> None:
        self.session = session
        self.tally = tally
        self.worker_id = worker_id
        self.on_written = on_written
        self.observer = observer
        # job id -> (queue, task, run seconds), for the observer; filled only when there is one.
        self._observed: dict[int, tuple[str, str, float | None]] = {}
        self.pending: list[Outcome] = []
        self.inflight: set[int] = set()
        #: True while outcomes cannot be written (the claim loop stops claiming meanwhile).
        self.failing = False
        self._closing = False
        self._ready = asyncio.Event()

    def add(self, outcome: Outcome, *, queue: str = "", task: str = "", seconds: float | None = None) -> None:
        """Queue ``outcome`` for the next batch (``queue``, ``task`` and ``seconds`` are for the observer)."""
        if self.observer is not None:
            self._observed[outcome.job_id] = (queue, task, seconds)
        self.pending.append(outcome)
        self._ready.set()

    def _observe(self, outcome: Outcome, written: bool) -> None:
        if self.observer is None:
            return
        meta = self._observed.pop(outcome.job_id, None)
        if written and meta is not None:
            self.observer(meta[0], meta[1], outcome.event, meta[2])

    def unwritten(self) -> int:
        """How many outcomes wait to be written (queued or being written)."""
        return len(self.pending) + len(self.inflight)

    def tracked(self) -> set[int]:
        """Ids of the jobs whose outcome is not written yet."""
        return self.inflight | {outcome.job_id for outcome in self.pending}

    async def close(self, task: asyncio.Task[None]) -> None:
        """Write what is pending (for up to 10 seconds), then end :meth:`run`'s ``task``."""
        self._closing = True
        self._ready.set()
        try:
            await asyncio.wait_for(task, timeout=_CLOSE_WAIT)
        except (TimeoutError, asyncio.CancelledError):
            get_logger("pgqueue.worker", worker_id=self.worker_id).warning(
                "worker.acks_unwritten", count=len(self.pending))

    async def run(self) -> None:
        log = get_logger("pgqueue.worker", worker_id=self.worker_id)
        failures = 0
        while True:
            if not self.pending:
                if self._closing:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            batch, self.pending = self.pending, []
            self.inflight = {outcome.job_id for outcome in batch}
            try:
                await self.session.run(functools.partial(self._write, batch=batch, log=log))
                failures = 0
                self.failing = False
                self._written()
            except Exception as exc:  # noqa: BLE001 - refused values vs an outage, told apart by refused()
                if not refused(exc):
                    # Outcomes are idempotent under their lease token: put them back and retry.
                    self.pending[:0] = batch
                    self.failing = True
                    failures += 1
                    wait = capped_backoff(failures, base=0.25, cap=5.0, doublings=6)
                    log.warning("database.unavailable", role="ack", error_type=type(exc).__name__,
                                error=first_line(exc), pending=len(self.pending), retry_in_s=wait)
                    await self.session.close()
                    await asyncio.sleep(wait)
                    continue
                # The database refused something in the batch itself (not the connection), or the
                # driver could not even send it: retrying the batch would fail forever and block
                # every outcome behind it.
                await self._write_one_by_one(batch, log)
                # The batch is written (or handed back, in which case the next round sets this
                # again): claims must not stay paused behind an outage that is over.
                failures = 0
                self.failing = False
                self._written()
            finally:
                self.inflight = set()

    def _written(self) -> None:
        if self.on_written is not None:
            self.on_written()

    async def _write_one_by_one(self, batch: list[Outcome], log: Any) -> None:
        """Write each outcome alone; one the database refuses becomes a plain failure of its job."""
        for index, outcome in enumerate(batch):
            try:
                await self.session.run(functools.partial(self._write, batch=[outcome], log=log))
            except Exception as exc:  # noqa: BLE001 - refused values vs an outage, told apart by refused()
                if not refused(exc):
                    # An outage after all: hand the rest back to the normal retry path.
                    self.pending[:0] = batch[index:]
                    self._ready.set()
                    return
                log.error("job.outcome_refused", job_id=outcome.job_id, outcome=outcome.state,
                          error_type=type(exc).__name__)
                error = encode_json({"type": "OutcomeRejected",
                                     "message": f"the database refused this job's outcome: {first_line(exc)}"})
                replacement = Outcome(job_id=outcome.job_id, token=outcome.token, state="failed", event="failed",
                                      error=error)
                try:
                    await self.session.run(functools.partial(self._write, batch=[replacement], log=log))
                except Exception as again:  # noqa: BLE001 - see above
                    if not refused(again):
                        self.pending[:0] = [outcome, *batch[index + 1:]]
                        self._ready.set()
                        return
                    log.error("job.outcome_dropped", job_id=outcome.job_id)

    async def _write(self, conn: AsyncPsycopgConnection, batch: list[Outcome], log: Any) -> None:
        store = AsyncJobStore(conn)
        completed = [o for o in batch if o.state == "completed"]
        failed = [o for o in batch if o.state != "completed"]
        written: set[int] = set()
        # Each statement commits on its own (autocommit): what it wrote is observed at once, so a
        # failure of the next one (and the batch's retry, which the fence then refuses) loses nothing.
        if completed:
            written |= await store.complete_jobs(completed)
            self.tally.completed += sum(1 for o in completed if o.job_id in written)
            for outcome in completed:
                self._observe(outcome, outcome.job_id in written)
        if failed:
            written_failed = await store.fail_jobs(failed)
            written |= written_failed
            self.tally.failed += sum(1 for o in failed if o.job_id in written_failed and o.state == "failed")
            for outcome in failed:
                self._observe(outcome, outcome.job_id in written_failed)
        missing = [outcome for outcome in batch if outcome.job_id not in written]
        if missing:
            # A batch re-sent after a lost commit reply finds its outcomes already written: done.
            resent = await store.outcomes_already_written(missing)
            for outcome in missing:
                if outcome.job_id in resent:
                    log.info("job.outcome_already_written", job_id=outcome.job_id, outcome=outcome.state)
                    self._observe(outcome, True)  # the first write's reply was lost, uncounted
                    if outcome.state == "completed":
                        self.tally.completed += 1
                    elif outcome.state == "failed":
                        self.tally.failed += 1
                else:
                    # Our claim was rescued (or the job cancelled) while we ran it: someone else
                    # owns the outcome now, and ours must not overwrite it.
                    log.warning("job.lease_lost", job_id=outcome.job_id, outcome=outcome.state)

    async def release(self, jobs: Sequence[Job], reason: str = "worker shutdown") -> None:
        """Hand jobs this worker will not finish back at once (their attempt not counted); after
        three failed tries their leases expire and the rescuer hands them back instead."""
        log = get_logger("pgqueue.worker", worker_id=self.worker_id)
        unfinished = [(job.id, job.lease_token) for job in jobs]
        for attempt in range(3):
            try:
                released = await AsyncJobStore(await self.session.get()).release_jobs(unfinished, reason)
                log.info("worker.released", released=described(jobs, released))
                break
            except DATABASE_ERRORS as exc:
                await self.session.close()
                log.warning("database.unavailable", role="release", error_type=type(exc).__name__,
                            attempt=attempt + 1)
                await asyncio.sleep(0.5)
