"""The heartbeat: renews the worker's lease, and writes ``job.set_progress`` updates."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pgqueue._db.jobs import JobStore
from pgqueue._db.workers import WorkerStore
from pgqueue._worker.background import SessionThread
from pgqueue._worker.progress import ProgressUpdate

if TYPE_CHECKING:
    from pgqueue._db.types import PsycopgConnection


class Heartbeat(SessionThread):
    """Renews the worker's lease every ``lease/4`` seconds and flushes progress every tick."""

    def __init__(self, dsn: str, worker_row: dict[str, Any], lease_seconds: float,
                 take_progress: Callable[[], list[ProgressUpdate]]) -> None:
        super().__init__("heartbeat", dsn, interval=min(0.5, lease_seconds / 4))
        self.worker_row = worker_row
        self.lease_seconds = lease_seconds
        self._take_progress = take_progress
        self._last_beat = 0.0

    def tick(self, conn: PsycopgConnection) -> None:
        now = time.monotonic()
        if now - self._last_beat >= self.lease_seconds / 4:
            WorkerStore(conn).heartbeat_worker(self.worker_row)
            self._last_beat = now
        updates = self._take_progress()
        if updates:
            JobStore(conn).update_progress(updates)

    def lease_current(self) -> bool:
        """True while at least half the lease is left since the last heartbeat that got through
        (timed from before it was sent, so the estimate errs short)."""
        return time.monotonic() - self._last_beat < self.lease_seconds / 2

    def on_stop(self, conn: PsycopgConnection) -> None:
        WorkerStore(conn).deregister_worker(self.worker_row["id"])
