"""Background threads of a worker process, each with its own connection so that a handler
blocking the event loop or every thread of the pool cannot stop them.

- :class:`Heartbeat` renews the worker's lease and flushes ``job.set_progress`` updates.
- :class:`Maintenance` elects one leader across all workers (a lease row, not an advisory lock)
  which stages due scheduled jobs, rescues the running jobs of dead workers and seals the audit
  trail.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from pgqueue._audit import AuditSealer
from pgqueue._db.errors import first_line
from pgqueue._db.jobs import JobStore
from pgqueue._db.sessions import ReconnectingSession, capped_backoff
from pgqueue._db.workers import WorkerStore
from pgqueue._log import get_logger
from pgqueue.errors import PgqueueError


class _ConnectedLoop(threading.Thread):
    """A daemon thread that runs ``tick`` every ``interval`` seconds on its own connection,
    reconnecting with capped backoff when the database goes away."""

    def __init__(self, name: str, dsn: str, interval: float) -> None:
        super().__init__(name=name, daemon=True)
        self.dsn = dsn
        self.interval = interval
        self.stopping = threading.Event()
        # Named like the worker's other sessions (pgqueue-claim, -ack, -listen), so an operator can
        # count a worker's connections in pg_stat_activity. Bounded (a wait for an answer ends
        # after PGQUEUE_NETWORK_TIMEOUT_SECONDS), as the worker loop's sessions: a heartbeat
        # waiting forever on a half-open path would leave its worker running, unable to renew its
        # lease, with no error to act on.
        self.session = ReconnectingSession(dsn, name, log=get_logger(f"pgqueue.{name}", thread=name))
        self.healthy = threading.Event()

    def tick(self, store: JobStore) -> None:
        raise NotImplementedError

    def on_stop(self, store: JobStore) -> None:
        """Last words on the way out (deregister, resign); errors are ignored."""

    def stop(self) -> None:
        self.stopping.set()

    def _tick(self, conn: psycopg.Connection[Any]) -> None:
        self.tick(JobStore(conn))

    def run(self) -> None:
        log = get_logger(f"pgqueue.{self.name}")
        failures = 0
        while not self.stopping.is_set():
            try:
                self.session.run(self._tick)
                if failures:
                    log.info("database.reconnected", thread=self.name)
                failures = 0
                self.healthy.set()
                wait = self.interval
            except (psycopg.Error, PgqueueError) as exc:
                failures += 1
                self.healthy.clear()
                wait = capped_backoff(failures, base=0.5, cap=min(10.0, self.interval * 4), doublings=5)
                log.warning("database.unavailable", thread=self.name, error_type=type(exc).__name__,
                            error=first_line(exc), retry_in_s=wait)
                self.session.close()
            self.stopping.wait(wait)
        with contextlib.suppress(psycopg.Error, PgqueueError):
            self.on_stop(JobStore(self.session.get()))
        self.session.close()


class Heartbeat(_ConnectedLoop):
    """Renews the worker's lease every ``lease/4`` seconds and flushes progress every tick."""

    def __init__(self, dsn: str, worker_row: dict[str, Any], lease_seconds: float,
                 take_progress: Callable[[], list[tuple[int, str, float, str | None]]]) -> None:
        super().__init__("heartbeat", dsn, interval=min(0.5, lease_seconds / 4))
        self.worker_row = worker_row
        self.lease_seconds = lease_seconds
        self._take_progress = take_progress
        self._last_beat = 0.0

    def tick(self, store: JobStore) -> None:
        now = time.monotonic()
        if now - self._last_beat >= self.lease_seconds / 4:
            WorkerStore(store.conn).heartbeat_worker(self.worker_row)
            self._last_beat = now
        updates = self._take_progress()
        if updates:
            store.update_progress(updates)

    def lease_current(self) -> bool:
        """True while at least half the lease is left since the last heartbeat that got through
        (timed from before it was sent, so the estimate errs short)."""
        return time.monotonic() - self._last_beat < self.lease_seconds / 2

    def on_stop(self, store: JobStore) -> None:
        WorkerStore(store.conn).deregister_worker(self.worker_row["id"])


class Maintenance(_ConnectedLoop):
    """Leader-only duties: stage due scheduled jobs, rescue jobs of dead workers, forget workers
    long dead, seal the audit trail. Every worker runs this thread; only the lease holder acts."""

    LEADER = "maintenance"

    def __init__(self, dsn: str, holder: str, lease_seconds: float, interval: float = 0.5,
                 extra_duties: list[Callable[[JobStore], None]] | None = None) -> None:
        super().__init__("maintenance", dsn, interval=interval)
        self.holder = holder
        self.ttl = max(lease_seconds, 5.0)
        self.is_leader = False
        self.extra_duties = extra_duties or []
        self.sealer = AuditSealer()

    def tick(self, job_store: JobStore) -> None:
        store = WorkerStore(job_store.conn)
        was_leader = self.is_leader
        self.is_leader = store.acquire_leadership(self.LEADER, self.holder, self.ttl)
        if self.is_leader != was_leader:
            get_logger("pgqueue.maintenance").info(
                "maintenance.leader_elected" if self.is_leader else "maintenance.leadership_lost", holder=self.holder)
        if not self.is_leader:
            return
        while store.stage_jobs(limit=1000) == 1000:
            pass
        rescued = store.rescue_jobs(limit=1000)
        if rescued:
            log = get_logger("pgqueue.maintenance")
            for job_id, state in rescued:
                log.warning("job.rescued", job_id=job_id, to_state=state)
        store.delete_expired_workers(keep_seconds=max(self.ttl * 10, 300.0))
        self.sealer(job_store)
        for duty in self.extra_duties:
            duty(job_store)

    def on_stop(self, store: JobStore) -> None:
        if self.is_leader:
            WorkerStore(store.conn).resign_leadership(self.LEADER, self.holder)
