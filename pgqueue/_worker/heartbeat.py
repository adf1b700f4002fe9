"""The heartbeat: renews the worker's lease, writes ``job.set_progress`` updates, and finds the
running jobs an operator cancelled (the fallback when the cancel NOTIFY does not arrive)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pgqueue._db.jobs import JobStore
from pgqueue._db.workers import WorkerStore
from pgqueue._worker.background import SessionThread
from pgqueue._worker.progress import ProgressUpdate

if TYPE_CHECKING:
    from pgqueue._db.types import PsycopgConnection


class Heartbeat(SessionThread):
    """Renews the worker's lease every ``lease/4`` seconds; every tick (at most 0.5 s) flushes
    progress and asks which of ``running_ids()`` were cancelled, passing them to ``on_cancelled``:
    a cancelled job's handler learns it within a second even with no LISTEN (transaction pooling)."""

    def __init__(self, dsn: str, worker_row: dict[str, Any], lease_seconds: float,
                 take_progress: Callable[[], list[ProgressUpdate]],
                 running_ids: Callable[[], Sequence[int]] = tuple,
                 on_cancelled: Callable[[list[int]], None] | None = None) -> None:
        super().__init__("heartbeat", dsn, interval=min(0.5, lease_seconds / 4))
        self.worker_row = worker_row
        self.lease_seconds = lease_seconds
        self._take_progress = take_progress
        self._running_ids = running_ids
        self._on_cancelled = on_cancelled
        self._last_beat = 0.0

    def tick(self, conn: PsycopgConnection) -> None:
        now = time.monotonic()
        if now - self._last_beat >= self.lease_seconds / 4:
            WorkerStore(conn).heartbeat_worker(self.worker_row)
            self._last_beat = now
        updates = self._take_progress()
        if updates:
            JobStore(conn).update_progress(updates)
        if self._on_cancelled is not None:
            running = self._running_ids()
            cancelled = JobStore(conn).find_cancelled_jobs(running) if running else []
            if cancelled:
                self._on_cancelled(cancelled)

    def lease_current(self) -> bool:
        """True while at least half the lease is left since the last heartbeat that got through
        (timed from before it was sent, so the estimate errs short)."""
        return time.monotonic() - self._last_beat < self.lease_seconds / 2

    def on_stop(self, conn: PsycopgConnection) -> None:
        WorkerStore(conn).deregister_worker(self.worker_row["id"])
