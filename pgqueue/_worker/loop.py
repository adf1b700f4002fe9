"""The worker's orchestration: start the parts, run until stopped, shut down in order.

One asyncio loop per process. The parts, each in its own module:

- :mod:`~pgqueue._worker.preflight`: refuse to start where the worker could never work.
- :mod:`~pgqueue._worker.listener`: LISTEN/NOTIFY wakes the claimer (polling is the fallback).
- :mod:`~pgqueue._worker.claimer`: claim batches on a dedicated autocommit session, dispatch them.
- :mod:`~pgqueue._worker.executor`: run a handler, turn what happened into an outcome.
- :mod:`~pgqueue._worker.transactional`: handlers whose writes commit with their completion.
- :mod:`~pgqueue._worker.acker`: write outcomes in batches on a second dedicated session.
- :mod:`~pgqueue._worker.heartbeat` and :mod:`~pgqueue._worker.maintenance` (with its
  :mod:`~pgqueue._worker.duties`): threads with sessions of their own, so that a handler
  blocking the event loop or every thread of the pool cannot stop them.
- :mod:`~pgqueue._worker.watchdog`: signals read off the loop, and the release of the running
  jobs at the grace when a handler blocks the loop.

Shutdown (a signal, :meth:`WorkerLoop.stop`, or nothing left to run until empty): stop claiming,
give running jobs the grace period, write their outcomes, release what is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pgqueue._db.jobs import TaskLimits
from pgqueue._db.server import AsyncServerStore
from pgqueue._db.sessions import AsyncReconnectingSession, capped_backoff
from pgqueue._log import get_logger
from pgqueue._payload import encode_json
from pgqueue._retention import RetentionPolicy
from pgqueue._worker.acker import Acker, OutcomeObserver, Tally
from pgqueue._worker.background import SessionThread, crash_site, read_loop_state
from pgqueue._worker.claimer import Claimer, Flow
from pgqueue._worker.duties import leader_duties
from pgqueue._worker.duties.pruner import Pruner
from pgqueue._worker.executor import JobRunner, failure_outcome
from pgqueue._worker.heartbeat import Heartbeat
from pgqueue._worker.listener import Listener
from pgqueue._worker.maintenance import Maintenance
from pgqueue._worker.payloads import PayloadSealer
from pgqueue._worker.pools import build_pools
from pgqueue._worker.prefetch import PrefetchSizer
from pgqueue._worker.preflight import check_connection
from pgqueue._worker.progress import ProgressBook
from pgqueue._worker.supervisor import PARENT_ENV
from pgqueue._worker.transactional import TransactionalRunner
from pgqueue._worker.watchdog import StopSignals, Watchdog
from pgqueue.jobs import Job
from pgqueue.settings import Settings

if TYPE_CHECKING:
    from pgqueue._db.types import AsyncPsycopgConnection
    from pgqueue.app import App
    from pgqueue.tasks import Task


async def _skip_commit_flush_wait(conn: AsyncPsycopgConnection) -> None:
    await AsyncServerStore(conn).skip_commit_flush_wait()


class WorkerLoop:
    """One worker process's run: jobs from ``queues`` (all when None), ``concurrency`` at once.

    Built by :class:`pgqueue.Worker`, which documents the behaviour. ``until_empty``: stop once
    nothing is left to run (see ``AsyncJobStore.has_pending_jobs``).
    """

    def __init__(self, app: App, *, queues: Sequence[str] | Mapping[str, int | None] | None, concurrency: int,
                 settings: Settings, worker_id: str | None, observer: OutcomeObserver | None = None) -> None:
        self.app = app
        self.pools = build_pools(queues, concurrency)
        served = [q for pool in self.pools for q in pool.queues or ()]
        self.queues = None if any(pool.queues is None for pool in self.pools) else sorted(served)
        # Every pool's slots: the thread pool and the transactional connections are sized by it.
        concurrency = sum(pool.capacity for pool in self.pools)
        self.concurrency = concurrency
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # Parsed now: a malformed key stops the worker before it claims anything.
        self.sealer = PayloadSealer(settings.encryption_keys, settings.encrypt_all)
        self.until_empty = False
        self.exit_code = 0
        self.stuck_threads = False
        self.tally = Tally()
        self.progress = ProgressBook(self.sealer.keyring)
        self.flow = Flow()
        self.running: dict[int, tuple[Job, asyncio.Task[None]]] = {}
        self.transactional = TransactionalRunner(app, self.sealer, self.progress, concurrency=concurrency)
        self._acker: Acker | None = None
        self._claimer: Claimer | None = None
        self.prefetch = PrefetchSizer(settings.prefetch)
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Told about every outcome this worker writes (``pgqueue worker --metrics-port``).
        self.observer = observer
        #: Run by the shutdown watchdog before it ends a process whose event loop is blocked
        #: (the CLI ends a handler's child processes): the code after run() never runs then.
        self.exit_hooks: list[Callable[[], object]] = []
        self._dsn: str | None = None
        self._background: list[SessionThread] = []
        self._signalled = False
        self._stop_requested_at: float | None = None
        self._finished = threading.Event()

    # --- stopping ---

    def stop(self) -> None:
        """Stop claiming and shut down gracefully (thread-safe, idempotent)."""
        if self._loop is None:
            self.flow.stopping = True  # not started yet: run() starts, sees this, and stops at once
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: run() has already returned
            self._loop.call_soon_threadsafe(self._begin_stop)

    def _begin_stop(self) -> None:
        if self.flow.stopping:
            return
        self.flow.stopping = True
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
        get_logger("pgqueue.worker", worker_id=self.worker_id).info(
            "worker.stopping", running=len(self.running), grace_s=self.settings.shutdown_grace_seconds)
        self.flow.wakeup.set()
        self.flow.slot_freed.set()

    def _on_empty(self) -> None:
        get_logger("pgqueue.worker", worker_id=self.worker_id).info("worker.queues_empty")
        self._begin_stop()

    def _on_signal(self, signum: int) -> None:
        """SIGTERM/SIGINT, in the signal thread (see :mod:`~pgqueue._worker.watchdog`): never on
        the event loop, which a handler may be blocking."""
        if self._signalled or self.flow.stopping:
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
        self._signalled = True
        # The grace counts from the signal, also for a loop that sees it late.
        self._stop_requested_at = time.monotonic()
        loop = self._loop
        if loop is not None:
            Watchdog(dsn=self._dsn, worker_id=self.worker_id, grace_seconds=self.settings.shutdown_grace_seconds,
                     loop=loop, finished=self._finished, running=self._running_jobs,
                     buffered=self._buffered_jobs,
                     background=lambda: self._background, tally=self.tally, exit_hooks=self.exit_hooks,
                     exit_code=self.exit_code).start()
        self.stop()

    def _on_loop_error(self, _loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        exc = context.get("exception")
        get_logger("pgqueue.worker", worker_id=self.worker_id).error(
            "worker.loop_error", error_type=type(exc).__name__ if exc is not None else None,
            at=crash_site(exc) if isinstance(exc, BaseException) else None,
            what=str(context.get("message", ""))[:200])

    def _wake_when_empty(self) -> None:
        # Run until empty: an attempt ended or outcomes were written, so the claimer looks again
        # at once instead of after the poll interval.
        if self.until_empty:
            self.flow.wakeup.set()

    def _on_written(self) -> None:
        # Outcomes written: a claim that a limit held back (our finished jobs still counted as
        # running) may go ahead now, instead of after the held-back poll.
        if self.flow.held_back:
            self.flow.wakeup.set()
        self._wake_when_empty()

    def _listening(self, on: bool) -> None:
        self.flow.listening = on

    def _limits_changed(self) -> None:
        self.flow.limits_version += 1

    # --- cancelling running jobs ---

    def _running_jobs(self) -> list[Job]:
        return read_loop_state(lambda: [job for job, _ in self.running.values()])

    def _buffered_jobs(self) -> list[Job]:
        return self._claimer.buffered_jobs() if self._claimer is not None else []

    def _running_ids(self) -> list[int]:
        # Read from the heartbeat thread. Prefetched jobs too: one cancelled while it waits must never start.
        buffered = [job_id for job_id, _ in self._claimer.buffered()] if self._claimer is not None else []
        return read_loop_state(lambda: list(self.running)) + buffered

    def _cancelled_from_thread(self, job_ids: list[int]) -> None:
        if self._loop is None:
            return
        for job_id in job_ids:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs any more
                self._loop.call_soon_threadsafe(self._cancel_running, job_id, None)

    def _cancel_running(self, job_id: int, token: str | None) -> None:
        """An operator cancelled ``job_id`` (under lease ``token``; None: the heartbeat saw it
        cancelled in the database): tell its handler, and cancel an async handler's coroutine."""
        entry = self.running.get(job_id)
        if entry is None:
            self._drop_cancelled_buffered(job_id, token)
            return  # another worker's job, or one that just ended
        job, handle = entry
        if (token is not None and token != job.lease_token) or job.cancelled:
            return
        job._cancel_requested = True
        task = self.app.tasks.get(job.task)
        get_logger("pgqueue.worker", worker_id=self.worker_id).info(
            "job.cancel_requested", job_id=job.id, task=job.task, queue=job.queue)
        if task is not None and task.is_async:
            # A sync handler's thread cannot be interrupted: it sees job.cancelled instead.
            handle.cancel("pgqueue: job cancelled")

    def _drop_cancelled_buffered(self, job_id: int, token: str | None) -> None:
        # A prefetched job cancelled before it started: it is already cancelled in the database
        # (with its audit row), so it is only forgotten here.
        if self._claimer is None:
            return
        job = self._claimer.drop_buffered(job_id, token)
        if job is None:
            return
        get_logger("pgqueue.worker", worker_id=self.worker_id).info(
            "job.cancelled", job_id=job.id, task=job.task, queue=job.queue, started=False)
        self._wake_when_empty()

    # --- running ---

    async def run(self, install_signal_handlers: bool = False) -> int:
        self._loop = asyncio.get_running_loop()
        # asyncio's default handler logs an unretrieved task exception with its traceback, whose
        # messages may quote a (decrypted) payload: log its type and where it was raised instead.
        self._loop.set_exception_handler(self._on_loop_error)
        # Not the loop's add_signal_handler: a handler blocking the loop would hold the signal back.
        signals = StopSignals(self._on_signal) if install_signal_handlers else None
        if signals is not None:
            signals.install()
        try:
            return await self._run()
        finally:
            self._finished.set()  # the watchdog has nothing left to do
            if signals is not None:
                signals.uninstall()

    async def _run(self) -> int:
        log = get_logger("pgqueue.worker", worker_id=self.worker_id)
        dsn = self._dsn = self.app.dsn
        facts = await check_connection(dsn, self.settings,
                                       transactional=any(task.transactional for task in self.app.tasks.values()))
        self.transactional.connection_limit = facts.connection_limit
        self.transactional.pooled = facts.pooled
        worker_row = {
            "id": self.worker_id, "hostname": socket.gethostname(), "pid": os.getpid(),
            "queues": self.queues or [], "concurrency": self.concurrency,
            "lease_seconds": self.settings.lease_seconds,
        }
        heartbeat = Heartbeat(dsn, worker_row, self.settings.lease_seconds, self.progress.take_all,
                              running_ids=self._running_ids, on_cancelled=self._cancelled_from_thread)
        pruner = Pruner(RetentionPolicy.from_settings(self.settings), self.settings.prune_interval_seconds)
        maintenance = Maintenance(dsn, self.worker_id, self.settings.lease_seconds,
                                  duties=leader_duties(self.settings.lease_seconds, pruner))
        runner = JobRunner(
            lambda: ThreadPoolExecutor(max_workers=self.concurrency + 4, thread_name_prefix="pgqueue-job"),
            headroom=4, transactional=self.transactional.run, sealer=self.sealer,
            max_result_bytes=self.settings.max_result_bytes,
        )
        # Prepared statements (planned once) only with no pooler in between: see session_options.
        # Claims commit without waiting for the WAL flush (see AsyncServerStore.skip_commit_flush_wait),
        # except behind a pooler, where a session setting would leak to other clients.
        claim_session = self._session(dsn, "claim", prepare=not facts.pooled,
                                      on_connect=None if facts.pooled else _skip_commit_flush_wait)
        acker = self._acker = Acker(self._session(dsn, "ack", prepare=not facts.pooled), self.tally,
                                    worker_id=self.worker_id, on_written=self._on_written,
                                    observer=self.observer)
        limited = [task for task in self.app.tasks.values() if task.limited]
        claimer = Claimer(
            claim_session, self.flow, worker_id=self.worker_id, pools=self.pools,
            lease_seconds=self.settings.lease_seconds, poll_seconds=self.settings.poll_seconds, running=self.running,
            acker=acker, heartbeat=heartbeat, dispatch=lambda job: self._dispatch(job, runner),
            on_empty=self._on_empty if self.until_empty else None, limited_tasks=[task.name for task in limited],
            task_limits=[TaskLimits(task.name, task.concurrency, task.rate_limit, task.rate_period_seconds,
                                    task.group_concurrency) for task in self.app.tasks.values()],
            breakers=[(task.name, cb.failures, cb.window, cb.cooldown) for task in self.app.tasks.values()
                      if (cb := task.circuit_breaker) is not None],
            unguarded=[task.name for task in self.app.tasks.values() if task.circuit_breaker is None],
            prefetch=self.prefetch,
            encrypted_tasks={task.name: task.encrypt for task in self.app.tasks.values()})
        self._claimer = claimer
        self._background = [heartbeat, maintenance]
        log.info("worker.started", queues=self.queues or "*", concurrency=self.concurrency,
                 tasks=len(self.app.tasks), pid=os.getpid())
        heartbeat.start()
        maintenance.start()
        if self.settings.poll_only:
            log.info("listener.disabled", reason="poll-only", poll_s=self.settings.poll_seconds)
        # Poll-only: the claimer's poll_seconds timeout is then the only way jobs are found.
        listener = None if self.settings.poll_only else asyncio.create_task(Listener(
            self.settings.listen_dsn or dsn, self.queues, poll_seconds=self.settings.poll_seconds,
            wake=self.flow.wakeup.set, stopping=lambda: self.flow.stopping, worker_id=self.worker_id,
            cancel=self._cancel_running, listening=self._listening, limits_changed=self._limits_changed).run())
        acking = asyncio.create_task(self._supervised("acker", acker.run))
        try:
            await claimer.run()
            # Prefetched jobs that never started go back at once, not after the grace period.
            await self._release_buffered(claimer, acker)
            await self._drain()
        finally:
            if listener is not None:
                listener.cancel()
            self.flow.stopping = True
            await acker.close(acking)
            await self._release_buffered(claimer, acker)
            await self._release_unfinished(acker)
            heartbeat.stop()
            maintenance.stop()
            for thread in (heartbeat, maintenance):
                await asyncio.to_thread(thread.join, 10)
            await claim_session.close()
            await acker.session.close()
            await self.transactional.close()
            runner.shutdown()
            self.stuck_threads = self.stuck_threads or runner.abandoned_total > 0 or any(
                t.name.startswith("pgqueue-job") and t.is_alive() for t in threading.enumerate())
            log.info("worker.stopped", completed=self.tally.completed, failed=self.tally.failed)
        return self.exit_code

    async def _supervised(self, part: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run`` until it returns, restarting it (logged, with backoff) whenever it crashes."""
        failures = 0
        while True:
            try:
                await run()
                return
            except Exception as exc:  # noqa: BLE001 - supervision: log and restart, never die silently
                failures += 1
                wait = capped_backoff(failures, base=0.25, cap=5.0, doublings=5)
                get_logger("pgqueue.worker", worker_id=self.worker_id).error(
                    "worker.part_crashed", part=part, error_type=type(exc).__name__, at=crash_site(exc),
                    restart_in_s=wait)
                await asyncio.sleep(wait)

    def _session(self, dsn: str, name: str, *, prepare: bool,
                 on_connect: Callable[[AsyncPsycopgConnection], Awaitable[None]] | None = None,
                 ) -> AsyncReconnectingSession:
        return AsyncReconnectingSession(dsn, name, prepare=prepare, log=get_logger("pgqueue.worker", role=name),
                                        on_connect=on_connect)

    def _read_dependencies(self, job: Job) -> dict[int, Any]:
        from pgqueue.app import read_dependency_results

        return read_dependency_results(self.app, self.app.dsn, job)

    def _dispatch(self, job: Job, runner: JobRunner) -> None:
        job._dependency_reader = self._read_dependencies
        task = self.app.tasks.get(job.task)
        # A sealed job's note often quotes its args: it is stored only as ciphertext.
        job._progress_sink = self.progress.record_sealed if self.sealer.must_seal(job, task) else self.progress.record
        handle = asyncio.create_task(self._execute(job, task, runner))
        self.running[job.id] = (job, handle)

    async def _execute(self, job: Job, task: Task[..., Any] | None, runner: JobRunner) -> None:
        started = time.monotonic()
        try:
            outcome = await runner.run(task, job)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - supervision: an attempt always ends in an outcome
            # A failure of the worker's own code around the handler (sealing its result, say) must
            # still end the attempt: a job with no outcome stays running under this live worker's
            # lease, and is never rescued while the worker lives.
            get_logger("pgqueue.worker", worker_id=self.worker_id, job_id=job.id).error(
                "worker.part_crashed", part="executor", error_type=type(exc).__name__, at=crash_site(exc))
            try:
                outcome = failure_outcome(job, task, exc)
            except Exception as policy_error:  # noqa: BLE001 - the task's retry policy itself fails: the job fails
                outcome = failure_outcome(job, None, policy_error)
                if self.sealer.must_seal(job, task):  # its traceback may quote the handler's error: type only
                    outcome = replace(outcome, error=encode_json({"type": type(policy_error).__name__}))
        finally:
            seconds = time.monotonic() - started
            self.prefetch.observe(seconds)
            self.running.pop(job.id, None)
            if self._claimer is not None:
                self._claimer.job_ended(job.id)  # its slot takes the next prefetched job at once
            else:
                self.flow.slot_freed.set()
        if outcome is None:
            self.progress.take(job.id)
            if task is not None and task.transactional and not job.cancelled:
                self.tally.completed += 1
                if self.observer is not None:  # its completion committed with the handler's writes
                    self.observer(job.queue, job.task, "completed", seconds)
            self._wake_when_empty()
            return
        progress = self.progress.take(job.id)
        if progress is not None:
            outcome = replace(outcome, progress=progress.percent, progress_note=progress.note,
                              progress_note_encrypted=progress.note_encrypted)
        assert self._acker is not None  # noqa: S101 - dispatch starts after run() made it
        self._acker.add(outcome, queue=job.queue, task=job.task, seconds=seconds)

    # --- shutting down ---

    async def _drain(self) -> None:
        """Give running jobs the grace period, then cancel what is left (it is released)."""
        if not self.running:
            return
        handles = [handle for _, handle in self.running.values()]
        grace = self.settings.shutdown_grace_seconds
        if self._stop_requested_at is not None:
            grace = max(0.0, grace - (time.monotonic() - self._stop_requested_at))
        _, pending = await asyncio.wait(handles, timeout=grace)
        if pending:
            get_logger("pgqueue.worker", worker_id=self.worker_id).warning("worker.grace_expired",
                                                                           unfinished=len(pending))

    async def _release_buffered(self, claimer: Claimer, acker: Acker) -> None:
        buffered = claimer.take_buffered()
        if buffered:
            await acker.release(buffered)

    async def _release_unfinished(self, acker: Acker) -> None:
        if not self.running:
            return
        unfinished = [job for job, _ in self.running.values()]
        for _, handle in self.running.values():
            handle.cancel()
        await acker.release(unfinished)
        # Their handlers were cancelled, but a sync handler's thread cannot be: the process must
        # not wait for it (the CLI exits with os._exit).
        self.stuck_threads = True
