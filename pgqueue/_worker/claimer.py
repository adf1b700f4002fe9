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
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pgqueue._db.breakers import AsyncBreakerStore, BreakerConfig
from pgqueue._db.errors import DATABASE_ERRORS, first_line
from pgqueue._db.jobs import CLAIM_BATCH_MAX, AsyncJobStore, LimitedClaim, TaskLimits
from pgqueue._db.sessions import AsyncReconnectingSession, capped_backoff
from pgqueue._log import get_logger
from pgqueue._worker.acker import Acker
from pgqueue._worker.background import read_loop_state
from pgqueue._worker.heartbeat import Heartbeat
from pgqueue._worker.pools import Pool
from pgqueue._worker.prefetch import PrefetchSizer
from pgqueue.jobs import Job

if TYPE_CHECKING:
    from pgqueue._db.types import AsyncPsycopgConnection

#: A pool whose slots are all busy and that started no job for this long is stalled: it claims
#: nothing ahead (its recent pace, on which the prefetch target rests, no longer holds).
STALL_SECONDS = 0.25
#: A stalled pool hands its buffered jobs back after this long without a start.
BUFFER_TTL_SECONDS = 1.0
#: Claims pause while the outcomes waiting to be written reach this many per slot (at least
#: MIN_ACK_BACKLOG): a healthy worker writes each batch within a round trip, far below it.
ACK_BACKLOG_PER_SLOT = 10
MIN_ACK_BACKLOG = 500
#: How often a claiming worker re-reads the limited queues and tasks (a listening worker also
#: re-reads them before its next claim when a change is announced, and without a listener, before
#: any claim once they are twice this old). The unlimited claim stops taking a newly limited
#: queue's jobs at once: it reads the settings itself.
LIMITS_REFRESH_SECONDS = 1.0
#: A limited queue's jobs are prefetched only while its limits, at its last claim, still allowed
#: at least this many times the batch: then the buffered jobs (which count as running, and as
#: starts) hold back nobody, and a limit that comes near binding turns prefetching off by itself.
LIMITED_PREFETCH_ROOM = 4
#: How soon a claim held back by a limit (queue full, rate spent) looks again: other workers'
#: jobs end, and the rate window slides, without a notification.
HELD_BACK_POLL_SECONDS = 0.1
#: How often a worker with circuit-breaker tasks looks for a breaker due a half-open trial, and
#: the longest it sleeps while idle (a trial is due at a time, not announced by a NOTIFY).
TRIAL_CHECK_SECONDS = 1.0
#: After a breaker was due a trial but no job of its task could be claimed (none available in the
#: worker's queues, or another worker took the trial), look again only after this long: finding
#: a job of one task may read far down a large backlog.
TRIAL_RETRY_SECONDS = 5.0


class _Signal(asyncio.Event):
    """An event that also sets a shared one, so the claimer can sleep on either with one waiter
    (``asyncio.wait`` over two event waits costs a task per event and more loop turns per wake-up).
    It counts how often it was set, so a claim can tell whether anything was signalled since it
    began, even after the event was cleared."""

    def __init__(self, either: asyncio.Event) -> None:
        super().__init__()
        self._either = either
        self.times = 0

    def set(self) -> None:
        self.times += 1
        super().set()
        self._either.set()


@dataclass
class Flow:
    """What the worker's parts signal each other."""

    #: Set by either of the two below.
    stirred: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set by a notification for a served queue, a stop request, and (run until empty) whenever
    #: an attempt ends or outcomes are written; the claimer waits on it once the queues are empty.
    wakeup: _Signal = field(init=False)
    #: Set when a running job ends, so a full worker claims again.
    slot_freed: _Signal = field(init=False)
    stopping: bool = False
    #: The last claim round was held back by a limit: the worker's own outcomes, once written,
    #: lower the running count that the limit is checked against, so the acker wakes the claimer.
    held_back: bool = False
    #: The listener's LISTEN is in place: every job made available in a served queue from now on
    #: sets ``wakeup`` (see Claimer's drained pools). False while it (re)connects, and in poll-only mode.
    listening: bool = False
    #: Counts announced changes to queue and task limits, and the listener's (re)connections (which
    #: may have missed some): the claimer's cached limits hold while it has not moved.
    limits_version: int = 0

    def __post_init__(self) -> None:
        self.wakeup = _Signal(self.stirred)
        self.slot_freed = _Signal(self.stirred)


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
        prefetch: sizes each pool's buffer of jobs claimed ahead of a free slot: by the unlimited
            claim, and by a limited queue's claim while its limits leave plenty of room (a
            buffered job counts against them while it waits); never for a limited task. None,
            or any task with a circuit breaker: no prefetching.
    """

    def __init__(self, session: AsyncReconnectingSession, flow: Flow, *, worker_id: str,
                 pools: Sequence[Pool], lease_seconds: float, poll_seconds: float,
                 running: Collection[int], acker: Acker, heartbeat: Heartbeat, dispatch: Callable[[Job], None],
                 on_empty: Callable[[], None] | None = None, limited_tasks: Collection[str] = (),
                 task_limits: Sequence[TaskLimits] = (), breakers: Sequence[BreakerConfig] = (),
                 unguarded: Sequence[str] = (), prefetch: PrefetchSizer | None = None,
                 encrypted_tasks: Mapping[str, bool] | None = None) -> None:
        self.session = session
        self.flow = flow
        self.worker_id = worker_id
        self.pools = list(pools)
        self.queues: list[str] | None = (
            None if any(p.queues is None for p in self.pools)
            else sorted({q for p in self.pools for q in p.queues or ()}))
        self.concurrency = sum(p.capacity for p in self.pools)
        # The worker's own limited tasks are known before the first refresh.
        self._own_limited_tasks = frozenset(limited_tasks)
        # Stored before the first claim (and retried with it while the database is away): the
        # claim enforces the code's task limits from pgqueue.task_limits, for every worker.
        self._task_limits: list[TaskLimits] | None = list(task_limits)
        # Stored with them: which tasks the code declares encrypt=True (pgqueue.encrypted_tasks), so
        # `pgqueue enqueue` encrypts them and pgqueue.enqueue() refuses them.
        self._encrypted_tasks: dict[str, bool] = dict(encrypted_tasks or {})
        self.limited_tasks: list[str] = sorted(limited_tasks)
        self.limited_queues: list[str] = []
        #: Per limited queue: how many more starts its limits allowed after this worker's last claim.
        self._headroom: dict[str, int] = {}
        self._limits_read_at = -1.0  # never read
        self._limits_version = -1  # flow.limits_version when they were read
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
        # No prefetching for an app with circuit breakers: a job buffered before its task's breaker
        # opened would still start after it, past the breaker, and a stalled downstream would then
        # fill the slots a half-open trial needs.
        self.prefetch = prefetch if prefetch is not None and not self.breakers else PrefetchSizer(cap=0)
        #: Claims pause while this many outcomes wait to be written (see run()).
        self.ack_backlog_limit = max(ACK_BACKLOG_PER_SLOT * self.concurrency, MIN_ACK_BACKLOG)

    # --- the local buffer of prefetched jobs ---

    def buffered(self) -> list[tuple[int, str]]:
        """(id, lease token) of every prefetched job not started yet (safe from another thread)."""
        return read_loop_state(lambda: [(job.id, job.lease_token) for pool in self.pools for job in list(pool.buffer)])

    def buffered_jobs(self) -> list[Job]:
        """Every prefetched job not started yet (safe from another thread)."""
        return read_loop_state(lambda: [job for pool in self.pools for job in list(pool.buffer)])

    def take_buffered(self) -> list[Job]:
        """Empty every buffer: the jobs that will not be started here."""
        taken = self.buffered_jobs()
        for pool in self.pools:
            pool.buffer.clear()
        return taken

    def drop_buffered(self, job_id: int, token: str | None = None) -> Job | None:
        """Remove a prefetched job (cancelled meanwhile) so it never starts; None: not buffered
        (under ``token``, when given)."""
        for pool in self.pools:
            for job in pool.buffer:
                if job.id == job_id and (token is None or token == job.lease_token):
                    pool.buffer.remove(job)
                    return job
        return None

    def job_ended(self, job_id: int) -> None:
        """A running job ended: start the next buffered job in its slot at once (no round trip),
        and wake the claim loop when the buffer runs low or a slot stays free."""
        for pool in self.pools:
            if job_id in pool.claimed:
                pool.claimed.discard(job_id)
                if pool.buffer and not self.flow.stopping:
                    self._start(pool, pool.buffer.popleft())
                # pool.claimed is exact here (every started job ends through this method): no need
                # for free()'s intersection with the running jobs on every job.
                if self._wants_claim(pool, pool.capacity - len(pool.claimed)):
                    self.flow.slot_freed.set()
                return
        self.flow.slot_freed.set()

    def _start(self, pool: Pool, job: Job) -> None:
        pool.claimed.add(job.id)
        pool.last_start = time.monotonic()
        self.dispatch(job)

    def _stalled(self, pool: Pool, free: int | None = None) -> bool:
        """Every slot busy and no job started for STALL_SECONDS: the recent pace no longer holds
        (a job that usually takes milliseconds hangs), so nothing more is claimed ahead."""
        free = pool.free(self.running) if free is None else free
        return free <= 0 and pool.last_start > 0 and time.monotonic() - pool.last_start > STALL_SECONDS

    async def _release_stale_buffers(self) -> None:
        """Hand back (uncounted) the buffered jobs of a pool that started nothing for BUFFER_TTL_SECONDS:
        the 20 ms promise of prefetching must hold when the pace changes, and another worker may
        be idle."""
        now = time.monotonic()
        for pool in self.pools:
            if pool.buffer and now - pool.last_start > BUFFER_TTL_SECONDS:
                stale = list(pool.buffer)
                pool.buffer.clear()
                get_logger("pgqueue.worker", worker_id=self.worker_id).info(
                    "worker.prefetch_released", jobs=len(stale), idle_s=round(now - pool.last_start, 1))
                await self.acker.release(stale, reason="prefetched job waited behind a stalled slot")

    def _until_buffer_expires(self) -> float | None:
        """Seconds until the first buffered pool's jobs are due to go back; None: nothing buffered."""
        expiries = [pool.last_start + BUFFER_TTL_SECONDS for pool in self.pools if pool.buffer]
        if not expiries:
            return None
        # Just past the expiry: _release_stale_buffers compares with a strict >.
        return max(0.0, min(expiries) - time.monotonic()) + 0.01

    def _start_buffered(self, pool: Pool) -> int:
        """Start buffered jobs in the pool's free slots; return the slots still free."""
        free = pool.free(self.running)
        while free > 0 and pool.buffer:
            self._start(pool, pool.buffer.popleft())
            free -= 1
        return free

    def _ahead(self, pool: Pool, free: int | None = None) -> int:
        """How many jobs to claim for the pool's buffer now: none while it is above half its
        target, or while the pool is stalled."""
        if self._stalled(pool, free):
            return 0
        target = self.prefetch.target(pool.capacity)
        have = len(pool.buffer)
        return target - have if have <= target // 2 else 0

    def _roomy(self, queue: str, batch: int) -> bool:
        """Whether a limited queue's limits left room for LIMITED_PREFETCH_ROOM batches at its last claim."""
        return self._headroom.get(queue, 0) >= LIMITED_PREFETCH_ROOM * batch

    def _wants_claim(self, pool: Pool, free: int | None = None) -> bool:
        free = pool.free(self.running) if free is None else free
        return free > 0 or self._ahead(pool, free) > 0

    async def run(self) -> None:
        log = get_logger("pgqueue.worker", worker_id=self.worker_id)
        flow = self.flow
        failures = 0
        # Claim nothing until our worker row exists: the rescuer treats jobs of unknown workers as orphans.
        while not flow.stopping and not await asyncio.to_thread(self.heartbeat.healthy.wait, 0.5):
            pass
        reconciled_at = time.monotonic()
        claim_uncertain = False
        poll_due = 0.0  # when the idle claimer claims again with nothing announced (the polling floor)
        while not flow.stopping:
            if claim_uncertain or time.monotonic() - reconciled_at > self.lease_seconds:
                try:
                    await self.session.run(self._release_lost_claims)
                    reconciled_at = time.monotonic()
                    claim_uncertain = False
                except DATABASE_ERRORS:
                    pass  # the claim below meets the same outage and backs off
            if any(pool.buffer for pool in self.pools):
                await self._release_stale_buffers()
            if not any(self._wants_claim(pool) for pool in self.pools):
                flow.slot_freed.clear()
                if not any(self._wants_claim(pool) for pool in self.pools):
                    # With jobs buffered, look again when the first buffer expires: a stalled
                    # pool's buffer goes back BUFFER_TTL_SECONDS after its last start, not up to
                    # twice that (a fixed wait begun just before the start would miss it).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._until_buffer_expires()):
                            await flow.slot_freed.wait()
                continue
            if self._drained() and time.monotonic() < poll_due:
                # Every pool with room found its queues empty at its last claim, and no job was
                # announced since: a freed slot alone is no reason to ask again (an idle worker
                # would send an empty claim after each job it ran). Wait for a notification, or
                # the poll that was due anyway.
                flow.slot_freed.clear()
                wait = poll_due - time.monotonic()
                expiry = self._until_buffer_expires()  # buffered jobs of a stalled pool go back on time
                await self._sleep_unless_woken(wait if expiry is None else min(wait, expiry))
                continue
            if not self.heartbeat.lease_current():
                # After an outage the claim connection may come back before the heartbeat does: a
                # job claimed under a lapsed lease looks orphaned to the rescuer (ours or another
                # worker's), is rescued at once and runs twice. Claim again once the lease is renewed.
                await asyncio.sleep(0.1)
                continue
            if self.acker.unwritten() >= self.ack_backlog_limit:
                # Backpressure: handlers finish faster than their outcomes are written (a slow disk,
                # a lock on the rows, a bad plan). A slot frees when its handler ends, so without
                # this the worker would keep claiming, and claimed-but-unwritten jobs (and memory)
                # would grow without bound. The acker wakes us after each batch it writes. Both
                # signals are cleared first (else the sleep returns at once and this loop spins,
                # starving the acker it waits for); the claim after the pause finds what they announced.
                flow.held_back = True
                flow.wakeup.clear()
                flow.slot_freed.clear()
                await self._sleep_unless_woken(HELD_BACK_POLL_SECONDS)
                continue
            if self.acker.failing:
                # Finished jobs whose outcomes cannot be written stay 'running' under our live lease,
                # where nobody rescues them: claiming more while that lasts would only add to them.
                await asyncio.sleep(0.25)
                continue
            # Cleared before claiming, so a notification or a finished job during the claim is kept.
            flow.wakeup.clear()
            flow.slot_freed.clear()
            try:
                hungry, held_back = await self._claim_round(flow.wakeup.times)
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
            flow.held_back = held_back
            if hungry:
                continue  # a pool took all it asked for: there may be more
            if self.on_empty is not None and not held_back and await self._nothing_left():
                self.on_empty()
                continue
            # Every pool is full or (momentarily) found nothing: sleep until notified, a slot frees,
            # or poll as a fallback; soon when a limit held a claim back. A breaker's cooldown ends
            # unannounced: workers with breakers look every second.
            idle = min(self.poll_seconds, TRIAL_CHECK_SECONDS) if self.breakers else self.poll_seconds
            wait = HELD_BACK_POLL_SECONDS if held_back else idle
            poll_due = time.monotonic() + wait
            await self._sleep_unless_woken(wait)

    def _drained(self) -> bool:
        """Whether every pool that has room found nothing left at its last claim, and nothing was
        announced since then.

        Only while the listener listens: every path that makes a job available in a served queue
        NOTIFYs (enqueue, retries, staged and rescued jobs, released claims, resumed queues, met
        dependencies), so an announcement, not a freed slot, is what can bring a new job. Not with
        circuit breakers: a breaker that closes is not announced (those workers poll every
        TRIAL_CHECK_SECONDS instead)."""
        if not self.flow.listening or self.breakers:
            return False
        wanting = [pool for pool in self.pools if self._wants_claim(pool)]
        return bool(wanting) and all(pool.drained_at == self.flow.wakeup.times for pool in wanting)

    async def _claim_round(self, wakeups: int) -> tuple[bool, bool]:
        """One claim for each pool with free slots: the unlimited claim, then each limited queue and
        limited task under its lock. Returns (a pool took all it asked for, a limit held one back).

        ``wakeups``: ``flow.wakeup.times`` as the round began; a pool whose every claim came back
        short (and not held back by a limit) is marked drained as of then."""
        if self._task_limits is not None:
            await self.session.run(self._sync_task_declarations)
            self._task_limits = None
        if self._limits_stale():
            # This claim must know them. A busy claimer refreshes them after its claims instead
            # (below), off the path of a new job.
            await self.session.run(self._read_limits)
        if not self._breakers_written:
            await self.session.run(self._write_breakers)
            self._breakers_written = True
        if self.breakers and any(pool.free(self.running) > 0 for pool in self.pools):
            for job in await self._claim_trial():  # dispatched at once: the claims below may fail
                self._dispatch_all(self._pool_of(job), [job])
        hungry = held_back = False
        limited = set(self.limited_queues)
        for pool in self.pools:
            free = self._start_buffered(pool)
            ahead = self._ahead(pool, free)
            if free <= 0 and ahead <= 0:
                continue
            # Until a claim of this round takes all it asked for, or a limit holds one back.
            pool.drained_at = None
            drained = True
            plain = None if pool.queues is None else [q for q in pool.queues if q not in limited]
            if plain is None or plain:
                # The only claim that fills the buffer too (see Claimer's prefetch argument).
                wanted = min(free + ahead, CLAIM_BATCH_MAX)
                jobs = await self.session.run(functools.partial(self._claim, queues=plain, limit=wanted))
                self._dispatch_all(pool, jobs)
                if jobs:
                    # The handlers start now, not after this round's bookkeeping and the claimer's
                    # next wait: what a lone job's wake-up latency is made of on an idle worker.
                    await asyncio.sleep(0)
                hungry = hungry or len(jobs) == wanted
                drained = len(jobs) < wanted
                free = pool.free(self.running)
            queues = sorted(limited) if pool.queues is None else [q for q in pool.queues if q in limited]
            # A limited queue's jobs are claimed ahead only while its limits leave far more room
            # than the batch (see LIMITED_PREFETCH_ROOM): a buffered job counts against them.
            ahead = self._ahead(pool, free) if queues else 0
            roomy = {q for q in queues if self._roomy(q, free + ahead)} if ahead > 0 else set()
            if free <= 0 and not roomy:
                # The limited claims below were not asked: their jobs may wait.
                if drained and not queues and not self.limited_tasks:
                    pool.drained_at = wakeups
                continue
            wanted = target = min(free, CLAIM_BATCH_MAX)
            claimed = 0
            held = False  # a limit held back jobs of this pool that wait
            for queue in queues:
                ask = (min(free + ahead, CLAIM_BATCH_MAX) if queue in roomy else wanted) - claimed
                if ask <= 0:
                    continue
                target = max(target, claimed + ask)
                claim = await self.session.run(
                    functools.partial(self._claim_limited_queue, queue=queue, limit=ask))
                self._dispatch_all(pool, claim.jobs)
                self._headroom[queue] = claim.headroom - len(claim.jobs)
                claimed += len(claim.jobs)
                held = held or claim.held_back
            for task in self.limited_tasks:
                if claimed >= wanted:
                    break
                ask = wanted - claimed
                jobs, waiting = await self.session.run(
                    functools.partial(self._claim_limited_task, task=task, queues=pool.queues, limit=ask))
                self._dispatch_all(pool, jobs)
                claimed += len(jobs)
                # Jobs left waiting: a limit, or a group whose head runs elsewhere, holds them back.
                held = held or (waiting > len(jobs) and len(jobs) < ask)
            held_back = held_back or held
            # A full batch (capped at CLAIM_BATCH_MAX) from any claim: there may be more.
            hungry = hungry or (claimed >= target and claimed > 0)
            if drained and claimed < target and not held:
                pool.drained_at = wakeups
        if time.monotonic() - self._limits_read_at >= LIMITS_REFRESH_SECONDS:
            # After the claims, not before: a job announced now does not wait for this round trip.
            await self.session.run(self._read_limits)
        return hungry, held_back

    def _limits_stale(self) -> bool:
        """Whether the limited queues and tasks must be read before claiming: never read, a change
        announced since (or the listener reconnected: it may have missed one), or, without a
        listener, idle for a while. A listening worker keeps them until a change is announced, so
        a lone job after a long idle is claimed without a round trip more."""
        if self._limits_read_at < 0 or self._limits_version != self.flow.limits_version:
            return True
        return not self.flow.listening and time.monotonic() - self._limits_read_at >= 2 * LIMITS_REFRESH_SECONDS

    def _pool_of(self, job: Job) -> Pool:
        """The pool whose slots a job of ``job.queue`` uses (the first that serves that queue)."""
        for pool in self.pools:
            if pool.queues is None or job.queue in pool.queues:
                return pool
        return self.pools[0]

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

    def _dispatch_all(self, pool: Pool, jobs: list[Job]) -> None:
        """Start what the pool's free slots take; buffer the rest (claimed ahead)."""
        free = pool.free(self.running)
        for job in jobs[:max(free, 0)]:
            self._start(pool, job)
        pool.buffer_jobs(jobs[max(free, 0):])

    async def _sync_task_declarations(self, conn: AsyncPsycopgConnection) -> None:
        """Once, before the first claim: the code's task limits and its encrypt=True tasks."""
        store = AsyncJobStore(conn)
        await store.sync_task_limits(self._task_limits or [])
        await store.sync_encrypted_tasks(self._encrypted_tasks)

    async def _read_limits(self, conn: AsyncPsycopgConnection) -> None:
        # Taken before the read: a change announced while it runs is read again next time.
        version = self.flow.limits_version
        queues, tasks = await AsyncJobStore(conn).list_limited_scopes()
        self._limits_version = version
        self.limited_queues = queues
        self._headroom = {queue: room for queue, room in self._headroom.items() if queue in queues}
        self.limited_tasks = sorted(set(tasks) | set(self._own_limited_tasks))
        self._limits_read_at = time.monotonic()

    async def _nothing_left(self) -> bool:
        if self.running or self.acker.tracked() or any(pool.buffer for pool in self.pools):
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
        tracked = set(self.running) | self.acker.tracked() | {job_id for job_id, _ in self.buffered()}
        released = await AsyncJobStore(conn).release_lost_claims(self.worker_id, sorted(tracked))
        if released:
            get_logger("pgqueue.worker", worker_id=self.worker_id).warning(
                "worker.lost_claims_released", jobs=released)

    async def _claim(self, conn: AsyncPsycopgConnection, queues: list[str] | None, limit: int) -> list[Job]:
        return await AsyncJobStore(conn).claim_jobs(queues, limit, self.worker_id, except_tasks=self.limited_tasks)

    async def _claim_limited_queue(self, conn: AsyncPsycopgConnection, queue: str, limit: int) -> LimitedClaim:
        return await AsyncJobStore(conn).claim_limited_queue_jobs(queue, limit, self.worker_id,
                                                                  except_tasks=self.limited_tasks)

    async def _claim_limited_task(self, conn: AsyncPsycopgConnection, task: str, queues: list[str] | None,
                                  limit: int) -> tuple[list[Job], int]:
        return await AsyncJobStore(conn).claim_limited_task_jobs(task, queues, limit, self.worker_id)

    async def _sleep_unless_woken(self, seconds: float) -> None:
        # The wake-up is also set by a stop request, so shutdown never waits out a backoff. A freed
        # slot wakes too: a full pool can claim again while the others found nothing.
        flow = self.flow
        if flow.wakeup.is_set() or flow.slot_freed.is_set():
            return
        flow.stirred.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await flow.stirred.wait()
