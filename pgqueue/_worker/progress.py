"""``job.set_progress`` values on their way to the database.

Handlers record progress from any thread; the heartbeat writes what accumulated every tick, and an
attempt's outcome takes its job's last value along, so the final figure lands with the outcome.
"""

from __future__ import annotations

import threading

from pgqueue.jobs import Job

#: (job id, lease token, percent, note): what ``JobStore.update_progress`` writes.
ProgressUpdate = tuple[int, str, float, str | None]


class ProgressBook:
    """The latest unwritten progress of each running job (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[str, float, str | None]] = {}

    def record(self, job: Job, percent: float, note: str | None) -> None:
        with self._lock:
            self._pending[job.id] = (job.lease_token, percent, note)

    def take_all(self) -> list[ProgressUpdate]:
        with self._lock:
            items, self._pending = self._pending, {}
        return [(job_id, token, percent, note) for job_id, (token, percent, note) in items.items()]

    def take(self, job_id: int) -> tuple[str, float, str | None] | None:
        with self._lock:
            return self._pending.pop(job_id, None)
