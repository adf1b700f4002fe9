"""The claimer: waits for a free slot (and a wake-up, or the poll interval), claims a batch of jobs
and hands each to the worker to run.

Claims run on the worker's claim session. Before claiming, the claimer makes sure the worker's
lease is current and its outcomes can be written, and after a claim whose answer was lost it
reconciles what the database thinks this worker runs with what it really runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pgqueue._db.breakers import AsyncBreakerStore, BreakerConfig
from pgqueue._db.errors import DATABASE_ERRORS, first_line
from pgqueue._db.jobs import AsyncJobStore
from pgqueue._db.sessions import AsyncReconnectingSession, capped_backoff
from pgqueue._log import get_logger
from pgqueue._worker.acker import Acker
from pgqueue._worker.heartbeat import Heartbeat
from pgqueue.jobs import Job

if TYPE_CHECKING:
    from pgqueue._db.types import AsyncPsycopgConnection

MAX_CLAIM_BATCH = 200
#: How often a worker with circuit-breaker tasks looks for a breaker due a half-open trial, and
#: the longest it sleeps while idle (a trial is due at a time, not announced by a NOTIFY).
TRIAL_CHECK_SECONDS = 1.0
#: After a breaker was due a trial but no job of its task could be claimed (none available in the
#: worker's queues, or another worker took the trial), look again only after this long: finding
#: a job of one task may read far down a large backlog.
TRIAL_RETRY_SECONDS = 5.0


@dataclass
class Flow:
    """What the worker's parts signal each other."""

    #: Set by a notification for a served queue, a stop request, and (run until empty) whenever
    #: an attempt ends or outcomes are written; the claimer waits on it once the queues are empty.
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when a running job ends, so a full worker claims again.
    slot_freed: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False


class Claimer:
    """The claim loop of one worker, until ``flow.stopping``.

    Args:
        running: ids of the jobs this worker runs now (the claimer only reads it).
        dispatch: starts running a claimed job (adds it to ``running``).
        on_empty: when set, called once nothing is left for this worker (see
            ``AsyncJobStore.has_pending_jobs``) and nothing of its own is running or unwritten.
        breakers: the circuit breakers of the app's tasks, written to the database before the
            first claim; the claimer also claims their half-open trials.
        unguarded: the app's tasks without a breaker, whose breaker rows (left from older code)
            are removed before the first claim.
    """

    def __init__(self, session: AsyncReconnectingSession, flow: Flow, *, worker_id: str,
                 queues: Sequence[str] | None, concurrency: int, lease_seconds: float, poll_seconds: float,
                 running: Collection[int], acker: Acker, heartbeat: Heartbeat, dispatch: Callable[[Job], None],
                 on_empty: Callable[[], None] | None = None, breakers: Sequence[BreakerConfig] = (),
                 unguarded: Sequence[str] = ()) -> None:
        self.session = session
        self.flow = flow
        self.worker_id = worker_id
        self.queues = queues
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.running = running
        self.acker = acker
        self.heartbeat = heartbeat
        self.dispatch = dispatch
        self.on_empty = on_empty
        self.breakers = tuple(breakers)
        self.unguarded = tuple(unguarded)
        self._breakers_written = not self.breakers and not self.unguarded
        self._trial_checked_at = 0.0
        self._trial_retry_at = 0.0

    async def run(self) -> None:
        log = get_logger("pgqueue.worker", worker_id=self.worker_id)
        flow = self.flow
        failures = 0
        # Claim nothing until our worker row exists: the rescuer treats jobs of unknown workers as orphans.
        while not flow.stopping and not await asyncio.to_thread(self.heartbeat.healthy.wait, 0.5):
            pass
        reconciled_at = time.monotonic()
        claim_uncertain = False
        while not flow.stopping:
            if claim_uncertain or time.monotonic() - reconciled_at > self.lease_seconds:
                try:
                    await self.session.run(self._release_lost_claims)
                    reconciled_at = time.monotonic()
                    claim_uncertain = False
                except DATABASE_ERRORS:
                    pass  # the claim below meets the same outage and backs off
            free = self.concurrency - len(self.running)
            if free <= 0:
                flow.slot_freed.clear()
                if self.concurrency - len(self.running) <= 0:
                    await flow.slot_freed.wait()
                continue
            if not self.heartbeat.lease_current():
                # After an outage the claim connection may come back before the heartbeat does: a
                # job claimed under a lapsed lease looks orphaned to the rescuer (ours or another
                # worker's), is rescued at once and runs twice. Claim again once the lease is renewed.
                await asyncio.sleep(0.1)
                continue
            if self.acker.failing:
                # Finished jobs whose outcomes cannot be written stay 'running' under our live lease,
                # where nobody rescues them: claiming more while that lasts would only add to them.
                await asyncio.sleep(0.25)
                continue
            # Cleared before claiming, so a notification that arrives during the claim is kept.
            flow.wakeup.clear()
            limit = min(free, MAX_CLAIM_BATCH)
            try:
                if not self._breakers_written:
                    await self.session.run(self._write_breakers)
                    self._breakers_written = True
                trials = await self._claim_trial() if self.breakers else []
                for job in trials:  # dispatched at once: the claim below may fail
                    self.dispatch(job)
                jobs = []
                if len(trials) < limit:
                    jobs = await self.session.run(functools.partial(self._claim, limit=limit - len(trials)))
                if failures:
                    log.info("database.reconnected", role="claim")
                failures = 0
            except DATABASE_ERRORS as exc:
                # The claim may have committed with only its reply lost: reconcile before the next one.
                claim_uncertain = True
                failures += 1
                wait = capped_backoff(failures, base=0.25, cap=10.0, doublings=6)
                log.warning("database.unavailable", role="claim", error_type=type(exc).__name__,
                            error=first_line(exc), retry_in_s=wait)
                await self.session.close()
                await self._sleep_unless_woken(wait)
                continue
            for job in jobs:
                self.dispatch(job)
            if len(jobs) + len(trials) < limit:
                if self.on_empty is not None and await self._nothing_left():
                    self.on_empty()
                    continue
                # The queue is (momentarily) empty: sleep until notified, or poll as a fallback.
                # A breaker's cooldown ends unannounced: workers with breakers look every second.
                await self._sleep_unless_woken(
                    min(self.poll_seconds, TRIAL_CHECK_SECONDS) if self.breakers else self.poll_seconds)

    async def _claim_trial(self) -> list[Job]:
        """At most every TRIAL_CHECK_SECONDS, claim a half-open trial job if a breaker is due one."""
        now = time.monotonic()
        if now - self._trial_checked_at < TRIAL_CHECK_SECONDS or now < self._trial_retry_at:
            return []
        self._trial_checked_at = now
        if not await self.session.run(self._find_due_breakers):
            return []
        job = await self.session.run(self._claim_breaker_trial)
        if job is None:
            self._trial_retry_at = time.monotonic() + TRIAL_RETRY_SECONDS
            return []
        get_logger("pgqueue.worker", worker_id=self.worker_id).info(
            "breaker.trial_claimed", task=job.task, job_id=job.id)
        return [job]

    async def _write_breakers(self, conn: AsyncPsycopgConnection) -> None:
        store = AsyncBreakerStore(conn)
        if self.breakers:
            await store.upsert_breakers(self.breakers)
        removed = await store.remove_breakers(self.unguarded, self.worker_id) if self.unguarded else []
        if removed:
            get_logger("pgqueue.worker", worker_id=self.worker_id).info("breaker.removed", tasks=removed)

    async def _find_due_breakers(self, conn: AsyncPsycopgConnection) -> list[str]:
        return await AsyncBreakerStore(conn).find_due_breakers([config[0] for config in self.breakers])

    async def _claim_breaker_trial(self, conn: AsyncPsycopgConnection) -> Job | None:
        return await AsyncBreakerStore(conn).claim_breaker_trial(
            [config[0] for config in self.breakers], self.queues, self.worker_id)

    async def _nothing_left(self) -> bool:
        if self.running or self.acker.tracked():
            return False  # our own jobs are not finished, or not written yet
        try:
            pending = await self.session.run(self._has_pending_jobs)
        except DATABASE_ERRORS:
            return False  # the next claim meets the same outage and backs off
        return not pending

    async def _has_pending_jobs(self, conn: AsyncPsycopgConnection) -> bool:
        return await AsyncJobStore(conn).has_pending_jobs(self.queues)

    async def _release_lost_claims(self, conn: AsyncPsycopgConnection) -> None:
        # Everything this process knows it holds: running handlers and outcomes not yet written.
        tracked = set(self.running) | self.acker.tracked()
        released = await AsyncJobStore(conn).release_lost_claims(self.worker_id, sorted(tracked))
        if released:
            get_logger("pgqueue.worker", worker_id=self.worker_id).warning(
                "worker.lost_claims_released", jobs=released)

    async def _claim(self, conn: AsyncPsycopgConnection, limit: int) -> list[Job]:
        return await AsyncJobStore(conn).claim_jobs(self.queues, limit, self.worker_id)

    async def _sleep_unless_woken(self, seconds: float) -> None:
        # The wake-up is also set by a stop request, so shutdown never waits out a backoff.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flow.wakeup.wait(), timeout=seconds)
