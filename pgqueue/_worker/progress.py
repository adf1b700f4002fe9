"""``job.set_progress`` values on their way to the database.

Handlers record progress from any thread; the heartbeat writes what accumulated every tick, and an
attempt's outcome takes its job's last value along, so the final figure lands with the outcome.

The note of a job whose payloads are sealed is sealed too (notes routinely quote the args): it
leaves the worker only as ciphertext, and the plaintext ``progress_note`` column stays NULL. It is
sealed when it is taken, not when it is recorded, so a handler that reports progress in a tight
loop pays for one encryption per heartbeat tick, not one per call.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

from pgqueue._crypto import Keyring
from pgqueue.jobs import Job


class ProgressUpdate(NamedTuple):
    """What ``JobStore.update_progress`` writes; at most one of ``note`` and ``note_encrypted`` is set."""

    job_id: int
    token: str
    percent: float
    note: str | None
    note_encrypted: bytes | None = None


class _Pending(NamedTuple):
    token: str
    percent: float
    note: str | None
    # The task name to seal the note under (the associated data), or None for a plaintext note.
    seal_as: str | None


class ProgressBook:
    """The latest unwritten progress of each running job (thread-safe).

    Args:
        keyring: the worker's keys, which seal the notes of jobs recorded with ``record_sealed``.
    """

    def __init__(self, keyring: Keyring | None = None) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._keyring = keyring

    def record(self, job: Job, percent: float, note: str | None) -> None:
        with self._lock:
            self._pending[job.id] = _Pending(job.lease_token, percent, note, None)

    def record_sealed(self, job: Job, percent: float, note: str | None) -> None:
        """``record`` for a job whose payloads are sealed: its note is stored only as ciphertext."""
        with self._lock:
            self._pending[job.id] = _Pending(job.lease_token, percent, note, job.task)

    def take_all(self) -> list[ProgressUpdate]:
        with self._lock:
            items, self._pending = self._pending, {}
        return [self._update(job_id, pending) for job_id, pending in items.items()]

    def take(self, job_id: int) -> ProgressUpdate | None:
        with self._lock:
            pending = self._pending.pop(job_id, None)
        return None if pending is None else self._update(job_id, pending)

    def _update(self, job_id: int, pending: _Pending) -> ProgressUpdate:
        token, percent, note, seal_as = pending
        if seal_as is None or note is None:
            return ProgressUpdate(job_id, token, percent, note)
        if self._keyring is None:
            # Unreachable in practice (a sealed job's args are opened with these keys before its
            # handler runs), but a note that cannot be sealed is dropped, never stored in plaintext.
            return ProgressUpdate(job_id, token, percent, None)
        return ProgressUpdate(job_id, token, percent, None,
                              self._keyring.encrypt(note.encode("utf-8"), "progress_note", seal_as))
