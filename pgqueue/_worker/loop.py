"""The worker loop: wait (LISTEN/NOTIFY or poll) -> claim a batch -> dispatch -> ack in batches.

One asyncio loop per process. Claims and acks run on two dedicated autocommit connections;
the heartbeat and maintenance run in threads with their own connections (see ``background``).
Acks are group-committed: while one batch is being written, finished jobs accumulate for the
next, so a busy worker writes many outcomes per round trip and an idle one writes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import sql

from pgqueue._db.connections import BoundedAsyncConnection
from pgqueue._db.queries import NOTIFY_CHANNEL
from pgqueue._db.store import AsyncJobStore, JobStore, Outcome
from pgqueue._log import get_logger
from pgqueue._payload import encode_json, encode_result
from pgqueue._retention import Pruner, RetentionPolicy
from pgqueue._worker.background import Heartbeat, Maintenance
from pgqueue._worker.executor import JobRunner, LeaseLost
from pgqueue._worker.payloads import PayloadSealer
from pgqueue._worker.supervisor import PARENT_ENV
from pgqueue.errors import ConfigurationError, PgqueueError
from pgqueue.jobs import Job
from pgqueue.settings import Settings

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    from pgqueue._db.store import JobStore as _JobStore
    from pgqueue.app import App
    from pgqueue.tasks import Task

# Keepalives let a half-open connection (the network vanished without a FIN) fail in about
# 10 + 3 * 5 = 25 s instead of hanging until the kernel's two-hour default.
_KEEPALIVES: dict[str, Any] = {
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3, "connect_timeout": 5,
}
# The worker's own sessions never use server-side prepared statements (psycopg prepares a query
# after its 5th execution): behind PgBouncer < 1.21 in transaction mode the next statement may run
# on another server connection, where "_pg3_0" does not exist. pgqueue's queries are cheap to plan.
_SESSION: dict[str, Any] = {**_KEEPALIVES, "prepare_threshold": None}
# The listener probes a quiet LISTEN session; no answer within this long means the path is lost.
PROBE_TIMEOUT = 5.0
_MAX_CLAIM_BATCH = 200
# Errors that mean "the database refused these values", not "the connection or server failed".
_REFUSED_DATA = (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError)
# Sessions a worker process holds whatever its concurrency: claim, ack, listen, heartbeat and
# maintenance. Transactional tasks add a pool of up to `concurrency` more, opened on demand.
WORKER_SESSIONS = 5

T = TypeVar("T")


class _Connection:
    """One autocommit connection that reconnects on demand after a failure."""

    def __init__(self, dsn: str, name: str, options: dict[str, Any] | None = None) -> None:
        self.dsn = dsn
        self.name = name
        self.options = options if options is not None else dict(_SESSION)
        self.conn: psycopg.AsyncConnection[Any] | None = None

    async def get(self) -> psycopg.AsyncConnection[Any]:
        if self.conn is None or self.conn.closed or self.conn.broken:
            await self.close()
            # Bounded: a claim or ack whose answer never comes (a half-open path) ends the session
            # after PGQUEUE_NETWORK_TIMEOUT_SECONDS, and the loop reconnects, instead of waiting forever.
            self.conn = await BoundedAsyncConnection.connect(
                self.dsn, autocommit=True, application_name=f"pgqueue-{self.name}", **self.options)
        return self.conn

    async def run(self, operation: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run ``operation``, replacing at once a session that turns out to be dead on first use.

        The server ends idle sessions (a role's ``idle_session_timeout``, ``pg_terminate_backend``,
        a restart) and the client only learns it with its next statement, which then never ran.
        Retrying it once on a new session is what a caller backing off would do anyway, minus
        the delay and the warning; a failure on a fresh session, or a statement error on a live
        one (read-only, timeout), still reaches the caller.
        """
        reused = self.conn is not None and not self.conn.closed and not self.conn.broken
        conn = await self.get()
        try:
            return await operation(conn)
        except (PgqueueError, psycopg.Error):
            if not (reused and conn.broken):
                raise
        get_logger("pgqueue.worker").debug("database.session_replaced", role=self.name)
        await self.close()
        return await operation(await self.get())

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self.conn.close()
            self.conn = None


class Worker:
    """Runs jobs from ``queues`` (all queues when None) with up to ``concurrency`` at once.

    Args:
        app: the App whose tasks this worker runs.
        queues: queue names to serve, or None for every queue.
        concurrency: jobs running at once in this process.
        settings: lease, poll and shutdown-grace settings (default: ``app.settings``).
        extra_duties: callables run by the maintenance leader each tick (e.g. the scheduler).
    """

    def __init__(self, app: App, *, queues: Sequence[str] | None = None, concurrency: int = 10,
                 settings: Settings | None = None, worker_id: str | None = None,
                 extra_duties: list[Callable[[_JobStore], None]] | None = None) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency {concurrency} must be >= 1")
        self.app = app
        self.queues = sorted(set(queues)) if queues else None
        self.concurrency = concurrency
        self.settings = settings or app.settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # Parsed now: a malformed key stops the worker before it claims anything.
        self._sealer = PayloadSealer(self.settings.encryption_keys, self.settings.encrypt_all)
        self.extra_duties = extra_duties or []
        self.exit_code = 0
        self.stuck_threads = False
        self._stopping = False
        self._hard_stop = False
        self._acks_closing = False
        self._acks_failing = False
        self._acks_inflight: set[int] = set()
        self._connection_limit: int | None = None
        self._pooled = False
        self._running: dict[int, tuple[Job, asyncio.Task[None]]] = {}
        self._acks: list[Outcome] = []
        self._progress: dict[int, tuple[str, float, str | None]] = {}
        self._progress_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        # asyncio.Event binds to a loop on first use, not at creation, so these are safe here.
        self._wakeup = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._ack_ready = asyncio.Event()
        self._heartbeat_ok = asyncio.Event()
        self._tx_pool: ConnectionPool[Any] | None = None
        self._async_tx_pool: AsyncConnectionPool[Any] | None = None
        self.completed = 0
        self.failed = 0

    # --- lifecycle ---

    def run(self, install_signal_handlers: bool = True) -> int:
        """Run until stopped (SIGTERM/SIGINT, or :meth:`stop`); returns the process exit code."""
        return asyncio.run(self.run_async(install_signal_handlers))

    def stop(self) -> None:
        """Ask the worker to stop claiming and shut down gracefully (thread-safe, idempotent)."""
        if self._loop is None:
            self._stopping = True  # not started yet: run() starts, sees this, and stops at once
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: run() has already returned
            self._loop.call_soon_threadsafe(self._begin_stop)

    def _begin_stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        get_logger("pgqueue.worker", worker_id=self.worker_id).info(
            "worker.stopping", running=len(self._running), grace_s=self.settings.shutdown_grace_seconds)
        self._wakeup.set()
        self._slot_freed.set()

    def _on_signal(self, signum: int) -> None:
        if self._stopping:
            log = get_logger("pgqueue.worker", worker_id=self.worker_id)
            if os.environ.get(PARENT_ENV):
                # Under --processes, Ctrl-C (the terminal signals the whole process group) and a
                # cgroup-wide SIGTERM (systemd's default) reach a child directly *and* through its
                # supervisor: one request to stop, not two. The supervisor's own second signal
                # SIGKILLs its children, so "exit now" still works.
                log.info("worker.signal_ignored", signal=signum, reason="already stopping")
                return
            # A second signal means "now": leases return the running jobs to the queue.
            log.warning("worker.exit_now", signal=signum)
            os._exit(130)
        self._begin_stop()

    async def run_async(self, install_signal_handlers: bool = False) -> int:
        log = get_logger("pgqueue.worker", worker_id=self.worker_id)
        self._loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(signum, self._on_signal, signum)
        dsn = self.app.dsn
        await self._check_connection(dsn)
        worker_row = {
            "id": self.worker_id, "hostname": socket.gethostname(), "pid": os.getpid(),
            "queues": self.queues or [], "concurrency": self.concurrency,
            "lease_seconds": self.settings.lease_seconds,
        }
        heartbeat = Heartbeat(dsn, worker_row, self.settings.lease_seconds, self._take_progress)
        pruner = Pruner(RetentionPolicy.from_settings(self.settings), self.settings.prune_interval_seconds)
        maintenance = Maintenance(dsn, self.worker_id, self.settings.lease_seconds,
                                  extra_duties=[*self.extra_duties, pruner])
        runner = JobRunner(
            lambda: ThreadPoolExecutor(max_workers=self.concurrency + 4, thread_name_prefix="pgqueue-job"),
            headroom=4, transactional=self._run_transactional, sealer=self._sealer,
        )
        # The claim and ack statements run thousands of times a second: with no pooler in between
        # they are prepared (planned once), which roughly halves their server CPU.
        claim_conn = _Connection(dsn, "claim", self._session_kwargs())
        ack_conn = _Connection(dsn, "ack", self._session_kwargs())
        log.info("worker.started", queues=self.queues or "*", concurrency=self.concurrency,
                 tasks=len(self.app.tasks), pid=os.getpid())
        heartbeat.start()
        maintenance.start()
        if self.settings.poll_only:
            log.info("listener.disabled", reason="poll-only", poll_s=self.settings.poll_seconds)
        # Poll-only: the claim loop's poll_seconds timeout is then the only way jobs are found.
        listener = None if self.settings.poll_only else asyncio.create_task(
            self._listen(self.settings.listen_dsn or dsn))
        acker = asyncio.create_task(self._ack_loop(ack_conn))
        try:
            await self._claim_loop(claim_conn, runner, heartbeat)
            await self._drain(runner)
        finally:
            if listener is not None:
                listener.cancel()
            self._stopping = True
            self._acks_closing = True
            self._ack_ready.set()
            try:
                await asyncio.wait_for(acker, timeout=10)
            except (TimeoutError, asyncio.CancelledError):
                log.warning("worker.acks_unwritten", count=len(self._acks))
            await self._release_unfinished(ack_conn)
            heartbeat.stop()
            maintenance.stop()
            for thread in (heartbeat, maintenance):
                await asyncio.to_thread(thread.join, 10)
            await claim_conn.close()
            await ack_conn.close()
            await self._close_pools()
            runner.shutdown()
            self.stuck_threads = self.stuck_threads or runner.abandoned_total > 0 or any(
                t.name.startswith("pgqueue-job") and t.is_alive() for t in threading.enumerate())
            log.info("worker.stopped", completed=self.completed, failed=self.failed)
        return self.exit_code

    async def _check_connection(self, dsn: str) -> None:
        """Refuse to start when the role or database can never grant the sessions a worker needs
        (otherwise one of them keeps failing: jobs run but stay 'running', or LISTEN never works),
        or when ``dsn`` goes through a connection pooler and nothing says how to be woken.

        Only a static CONNECTION LIMIT is checked, and only if the database answers now: one that
        is down or full is retried by the loops like any other outage.
        """
        try:
            async with await psycopg.AsyncConnection.connect(
                    dsn, autocommit=True, application_name="pgqueue-worker-check", **_SESSION) as conn:
                role, limit, source = await AsyncJobStore(conn).connection_limit()
                # PostgreSQL's BackendKeyData carries the backend's pid; a pooler (PgBouncer, in
                # any pool mode) sends a key of its own instead, as the client's backend varies.
                cur = await conn.execute("SELECT pg_backend_pid()")
                row = await cur.fetchone()
                self._pooled = row is not None and row[0] != conn.info.backend_pid
        except (PgqueueError, psycopg.Error, OSError):
            return
        self._connection_limit = limit
        if self._pooled and not self.settings.poll_only and self.settings.listen_dsn is None:
            raise ConfigurationError(
                "the worker's DSN goes through a connection pooler (PgBouncer?), where LISTEN does not work in "
                "transaction pooling: set PGQUEUE_LISTEN_DSN (--listen-dsn) to a direct PostgreSQL DSN, "
                "or PGQUEUE_POLL_ONLY=1 (--poll-only) to find jobs by polling alone")
        transactional = any(task.transactional for task in self.app.tasks.values())
        needed = WORKER_SESSIONS + (1 if transactional else 0)
        if limit is not None and limit < needed:
            what = (f"role {role!r} has CONNECTION LIMIT {limit}" if source == "role"
                    else f"the database has CONNECTION LIMIT {limit}")
            raise ConfigurationError(
                f"{what}, but a pgqueue worker process needs {needed} connections (claim, ack, listen, heartbeat, "
                f"maintenance{', and at least one for transactional tasks' if transactional else ''}); "
                f"raise the limit to at least {needed} per worker process")

    # --- waking up ---

    async def _listen(self, dsn: str) -> None:
        log = get_logger("pgqueue.worker", worker_id=self.worker_id)
        failures = 0
        probe_every = max(1.0, min(self.settings.poll_seconds, 5.0))
        while not self._stopping:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await BoundedAsyncConnection.connect(
                    dsn, autocommit=True, application_name="pgqueue-listen", **_SESSION)
                conn.answer_timeout = PROBE_TIMEOUT
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
                # Probe before the server's idle_session_timeout would end the session.
                idle_limit = await AsyncJobStore(conn).idle_session_timeout()
                # A quarter, not a half: a busy host may run the probe late, and one miss costs
                # the session and the notifications sent while it is replaced.
                probe = probe_every if idle_limit <= 0 else max(0.1, min(probe_every, idle_limit / 4))
                if failures:
                    log.info("listener.reconnected")
                failures = 0
                # Anything enqueued while we were not listening was not announced to us.
                self._wake()
                while not self._stopping:
                    async for notify in conn.notifies(timeout=probe):
                        if self.queues is None or notify.payload in self.queues:
                            self._wake()
                    # A quiet connection may be a dead one: probe it, bounded in time (by the
                    # connection's answer_timeout, not asyncio cancellation, whose cancel request
                    # would wait up to 10 s more on the same dead path).
                    await conn.execute("SELECT 1")
            except asyncio.CancelledError:
                raise
            # PgqueueError too: a session ended during the store's query (idle_session_timeout above)
            # arrives as DatabaseUnavailable, and letting it escape would end this task silently,
            # leaving the worker to find jobs by polling alone until it restarts.
            except (PgqueueError, psycopg.Error, OSError, TimeoutError) as exc:
                failures += 1
                wait = min(0.25 * 2 ** min(failures, 6), 10.0)
                log.warning("listener.disconnected", error_type=type(exc).__name__, retry_in_s=wait)
                await asyncio.sleep(wait)
            finally:
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        await conn.close()

    def _wake(self) -> None:
        self._wakeup.set()

    # --- claiming and dispatch ---

    async def _claim_loop(self, claim_conn: _Connection, runner: JobRunner, heartbeat: Heartbeat) -> None:
        log = get_logger("pgqueue.worker", worker_id=self.worker_id)
        failures = 0
        # Claim nothing until our worker row exists: the rescuer treats jobs of unknown workers as orphans.
        while not self._stopping and not await asyncio.to_thread(heartbeat.healthy.wait, 0.5):
            pass
        reconciled_at = time.monotonic()
        claim_uncertain = False
        while not self._stopping:
            if claim_uncertain or time.monotonic() - reconciled_at > self.settings.lease_seconds:
                try:
                    await claim_conn.run(self._release_lost_claims)
                    reconciled_at = time.monotonic()
                    claim_uncertain = False
                except (PgqueueError, psycopg.Error, OSError):
                    pass  # the claim below meets the same outage and backs off
            free = self.concurrency - len(self._running)
            if free <= 0:
                self._slot_freed.clear()
                if self.concurrency - len(self._running) <= 0:
                    await self._slot_freed.wait()
                continue
            if not heartbeat.lease_current():
                # After an outage the claim connection may come back before the heartbeat does: a
                # job claimed under a lapsed lease looks orphaned to the rescuer (ours or another
                # worker's), is rescued at once and runs twice. Claim again once the lease is renewed.
                await asyncio.sleep(0.1)
                continue
            if self._acks_failing:
                # Finished jobs whose outcomes cannot be written stay 'running' under our live lease,
                # where nobody rescues them: claiming more while that lasts would only add to them.
                await asyncio.sleep(0.25)
                continue
            # Cleared before claiming, so a notification that arrives during the claim is kept.
            self._wakeup.clear()
            try:
                jobs = await claim_conn.run(functools.partial(self._claim, limit=min(free, _MAX_CLAIM_BATCH)))
                if failures:
                    log.info("database.reconnected", role="claim")
                failures = 0
            except (PgqueueError, psycopg.Error, OSError) as exc:
                # The claim may have committed with only its reply lost: reconcile before the next one.
                claim_uncertain = True
                failures += 1
                wait = min(0.25 * 2 ** min(failures, 6), 10.0)
                log.warning("database.unavailable", role="claim", error_type=type(exc).__name__,
                            error=_first_line(exc), retry_in_s=wait)
                await claim_conn.close()
                await self._sleep_unless_stopping(wait)
                continue
            for job in jobs:
                self._dispatch(job, runner)
            if len(jobs) < min(free, _MAX_CLAIM_BATCH):
                # The queue is (momentarily) empty: sleep until notified, or poll as a fallback.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=self.settings.poll_seconds)

    async def _release_lost_claims(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # Everything this process knows it holds: running handlers and outcomes not yet written.
        tracked = set(self._running) | self._acks_inflight | {outcome.job_id for outcome in self._acks}
        released = await AsyncJobStore(conn).release_lost_claims(self.worker_id, sorted(tracked))
        if released:
            get_logger("pgqueue.worker", worker_id=self.worker_id).warning(
                "worker.lost_claims_released", jobs=released)

    async def _claim(self, conn: psycopg.AsyncConnection[Any], limit: int) -> list[Job]:
        return await AsyncJobStore(conn).claim_jobs(self.queues, limit, self.worker_id)

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        # _wakeup is also set by a stop request, so shutdown never waits out a backoff.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=seconds)

    def _dispatch(self, job: Job, runner: JobRunner) -> None:
        job._progress_sink = self._record_progress
        task = self.app.tasks.get(job.task)
        handle = asyncio.create_task(self._execute(job, task, runner), name=f"pgqueue-job-{job.id}")
        self._running[job.id] = (job, handle)

    async def _execute(self, job: Job, task: Task | None, runner: JobRunner) -> None:
        try:
            outcome = await runner.run(task, job)
        finally:
            self._running.pop(job.id, None)
            self._slot_freed.set()
        if outcome is None:
            self._take_job_progress(job.id)
            if task is not None and task.transactional:
                self.completed += 1
            return
        progress = self._take_job_progress(job.id)
        if progress is not None:
            outcome = replace(outcome, progress=progress[1], progress_note=progress[2])
        self._acks.append(outcome)
        self._ack_ready.set()

    # --- acknowledging outcomes ---

    async def _ack_loop(self, ack_conn: _Connection) -> None:
        log = get_logger("pgqueue.worker", worker_id=self.worker_id)
        failures = 0
        while True:
            if not self._acks:
                if self._acks_closing:
                    return
                self._ack_ready.clear()
                await self._ack_ready.wait()
                continue
            batch, self._acks = self._acks, []
            self._acks_inflight = {outcome.job_id for outcome in batch}
            try:
                await ack_conn.run(functools.partial(self._write_outcomes, batch=batch, log=log))
                failures = 0
                self._acks_failing = False
            except _REFUSED_DATA:
                # The database refused something in the batch itself (not the connection): retrying
                # the batch would refuse it forever and block every outcome behind it.
                await self._write_one_by_one(ack_conn, batch, log)
                # The batch is written (or handed back, in which case the next round sets this
                # again): claims must not stay paused behind an outage that is over.
                failures = 0
                self._acks_failing = False
            except (PgqueueError, psycopg.Error, OSError) as exc:
                # Outcomes are idempotent under their lease token: put them back and retry.
                self._acks[:0] = batch
                self._acks_failing = True
                failures += 1
                wait = min(0.25 * 2 ** min(failures, 6), 5.0)
                log.warning("database.unavailable", role="ack", error_type=type(exc).__name__,
                            error=_first_line(exc), pending=len(self._acks), retry_in_s=wait)
                await ack_conn.close()
                await asyncio.sleep(wait)
            finally:
                self._acks_inflight = set()

    async def _write_one_by_one(self, ack_conn: _Connection, batch: list[Outcome], log: Any) -> None:
        """Write each outcome alone; one the database refuses becomes a plain failure of its job."""
        for index, outcome in enumerate(batch):
            try:
                await ack_conn.run(functools.partial(self._write_outcomes, batch=[outcome], log=log))
            except _REFUSED_DATA as exc:
                log.error("job.outcome_refused", job_id=outcome.job_id, outcome=outcome.state,
                          error_type=type(exc).__name__)
                error = encode_json({"type": "OutcomeRejected",
                                     "message": f"the database refused this job's outcome: {_first_line(exc)}"})
                replacement = Outcome(job_id=outcome.job_id, token=outcome.token, state="failed", event="failed",
                                      error=error)
                try:
                    await ack_conn.run(functools.partial(self._write_outcomes, batch=[replacement], log=log))
                except _REFUSED_DATA:
                    log.error("job.outcome_dropped", job_id=outcome.job_id)
            except (PgqueueError, psycopg.Error, OSError):
                # An outage after all: hand the rest back to the normal retry path.
                self._acks[:0] = batch[index:]
                self._ack_ready.set()
                return

    async def _write_outcomes(self, conn: psycopg.AsyncConnection[Any], batch: list[Outcome], log: Any) -> None:
        store = AsyncJobStore(conn)
        completed = [o for o in batch if o.state == "completed"]
        failed = [o for o in batch if o.state != "completed"]
        written: set[int] = set()
        if completed:
            written |= await store.complete_jobs(completed)
            self.completed += sum(1 for o in completed if o.job_id in written)
        if failed:
            written_failed = await store.fail_jobs(failed)
            written |= written_failed
            self.failed += sum(1 for o in failed if o.job_id in written_failed and o.state == "failed")
        for outcome in batch:
            if outcome.job_id not in written:
                # Our claim was rescued (or the job cancelled) while we ran it: someone else owns
                # the outcome now, and ours must not overwrite it.
                log.warning("job.lease_lost", job_id=outcome.job_id, outcome=outcome.state)

    async def _drain(self, runner: JobRunner) -> None:
        """Give running jobs the grace period, then cancel what is left (it is released)."""
        if not self._running:
            return
        log = get_logger("pgqueue.worker", worker_id=self.worker_id)
        handles = [handle for _, handle in self._running.values()]
        _, pending = await asyncio.wait(handles, timeout=self.settings.shutdown_grace_seconds)
        if pending:
            log.warning("worker.grace_expired", unfinished=len(pending))
            self._hard_stop = True

    async def _release_unfinished(self, ack_conn: _Connection) -> None:
        if not self._running:
            return
        unfinished = [(job.id, job.lease_token) for job, _ in self._running.values()]
        for _, handle in self._running.values():
            handle.cancel()
        log = get_logger("pgqueue.worker", worker_id=self.worker_id)
        for attempt in range(3):
            try:
                released = await AsyncJobStore(await ack_conn.get()).release_jobs(unfinished)
                log.info("worker.released", released=sorted(released))
                break
            except (PgqueueError, psycopg.Error, OSError) as exc:
                await ack_conn.close()
                log.warning("database.unavailable", role="release", error_type=type(exc).__name__,
                            attempt=attempt + 1)
                await asyncio.sleep(0.5)
        self.stuck_threads = True

    # --- progress ---

    def _record_progress(self, job: Job, percent: float, note: str | None) -> None:
        with self._progress_lock:
            self._progress[job.id] = (job.lease_token, percent, note)

    def _take_progress(self) -> list[tuple[int, str, float, str | None]]:
        with self._progress_lock:
            items, self._progress = self._progress, {}
        return [(job_id, token, percent, note) for job_id, (token, percent, note) in items.items()]

    def _take_job_progress(self, job_id: int) -> tuple[str, float, str | None] | None:
        with self._progress_lock:
            return self._progress.pop(job_id, None)

    # --- transactional tasks ---

    async def _run_transactional(self, task: Task, job: Job) -> None:
        if task.is_async:
            pool = await self._get_async_tx_pool()
            async with _live_async_connection(pool) as conn, conn.transaction():
                job.connection = conn
                result = await task.fn(job, **job.args)
                outcome = self._tx_outcome(job, result)
                if job.id not in await AsyncJobStore(conn).complete_jobs([outcome]):
                    raise LeaseLost(f"job {job.id} was rescued before it finished")
            return
        tx_pool = self._get_tx_pool()

        def run_in_thread() -> None:
            with _live_connection(tx_pool) as conn, conn.transaction():
                job.connection = conn
                result = task.fn(job, **job.args)
                outcome = self._tx_outcome(job, result)
                if job.id not in JobStore(conn).complete_jobs([outcome]):
                    raise LeaseLost(f"job {job.id} was rescued before it finished")

        await asyncio.to_thread(run_in_thread)

    def _tx_outcome(self, job: Job, result: Any) -> Outcome:
        progress = self._take_job_progress(job.id)
        outcome = Outcome(job_id=job.id, token=job.lease_token, state="completed", result=encode_result(result),
                          progress=progress[1] if progress else None,
                          progress_note=progress[2] if progress else None)
        return self._sealer.seal(job, self.app.tasks.get(job.task), outcome)

    def _tx_pool_size(self) -> int:
        # Within a CONNECTION LIMIT, the pool takes what the worker's own sessions leave (jobs wait
        # for a pooled connection) rather than failing connection attempts it knows will fail.
        if self._connection_limit is None:
            return self.concurrency
        return max(1, min(self.concurrency, self._connection_limit - WORKER_SESSIONS))

    def _session_kwargs(self) -> dict[str, Any]:
        # Prepared statements only when no pooler is between (known after _check_connection).
        return dict(_SESSION) if self._pooled else dict(_KEEPALIVES)

    def _get_tx_pool(self) -> ConnectionPool[Any]:
        if self._tx_pool is None:
            from psycopg_pool import ConnectionPool

            self._tx_pool = ConnectionPool(self.app.dsn, min_size=0, max_size=self._tx_pool_size(), open=True,
                                           kwargs=self._session_kwargs(), name="pgqueue-tx")
        return self._tx_pool

    async def _get_async_tx_pool(self) -> AsyncConnectionPool[Any]:
        if self._async_tx_pool is None:
            from psycopg_pool import AsyncConnectionPool

            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                self.app.dsn, min_size=0, max_size=self._tx_pool_size(), open=False,
                kwargs=self._session_kwargs(), name="pgqueue-async-tx")
            await pool.open()
            self._async_tx_pool = pool
        return self._async_tx_pool

    async def _close_pools(self) -> None:
        if self._tx_pool is not None:
            await asyncio.to_thread(self._tx_pool.close, 5)
        if self._async_tx_pool is not None:
            await self._async_tx_pool.close(5)


# A pooled session may have been ended by the server while it sat idle (a role's
# idle_session_timeout, a restart); a handler given one would fail its attempt on its first
# statement. So each is pinged and dead ones are dropped (the pool replaces them) before a handler
# gets a connection. Not psycopg_pool's check=: it sleeps about a second between failed checks,
# longer than an aggressive idle_session_timeout, so each replacement died idle before its turn.
@contextlib.contextmanager
def _live_connection(pool: ConnectionPool[Any]) -> Iterator[psycopg.Connection[Any]]:
    conn = pool.getconn()
    for _ in range(pool.max_size):
        try:
            pool.check_connection(conn)
            break
        except psycopg.Error:
            pool.putconn(conn)
            conn = pool.getconn()
    try:
        yield conn
    finally:
        pool.putconn(conn)


@contextlib.asynccontextmanager
async def _live_async_connection(pool: AsyncConnectionPool[Any]) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    conn = await pool.getconn()
    for _ in range(pool.max_size):
        try:
            await pool.check_connection(conn)
            break
        except psycopg.Error:
            await pool.putconn(conn)
            conn = await pool.getconn()
    try:
        yield conn
    finally:
        await pool.putconn(conn)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
