"""The enqueuer: streams the soak's jobs at an even rate over the run, and knows exactly how many
landed, database restarts included."""

from __future__ import annotations

import threading
import time

import pgqueue
from pgqueue._db.errors import DATABASE_ERRORS
from pgqueue._db.soak import EnqueuerSession
from pgqueue._soak.app import DOOMED, ENQUEUED_TASKS, FLAKY, POISON, WORK
from pgqueue._soak.app import app as soak_app

_TICK = 0.25
_MAX_BATCH = 1000


def task_for(n: int) -> str:
    """3 % flaky, 1 % doomed, 1 % poison, the rest plain: a fixed mix, so every seed enqueues the same jobs."""
    rest = n % 100
    return FLAKY if rest < 3 else DOOMED if rest == 3 else POISON if rest == 4 else WORK


class Enqueuer(threading.Thread):
    def __init__(self, dsn: str, total: int, duration: float, started: float) -> None:
        super().__init__(name="soak-enqueuer", daemon=True)
        self.dsn = dsn
        self.total = total
        self.duration = duration
        self.started = started
        self.confirmed = 0  # jobs known to be committed
        self.retried_batches = 0
        self.error: str | None = None
        self.stopping = threading.Event()
        self._app = pgqueue.App(dsn)
        self._session = EnqueuerSession(dsn)

    def run(self) -> None:
        try:
            while self.confirmed < self.total and not self.stopping.is_set():
                elapsed = time.monotonic() - self.started
                due = min(self.total, int(self.total * min(1.0, elapsed / self.duration)))
                while self.confirmed < due and not self.stopping.is_set():
                    self._send(self.confirmed, min(due, self.confirmed + _MAX_BATCH))
                self.stopping.wait(_TICK)
        except Exception as exc:  # noqa: BLE001 - reported on the scoreboard, never swallowed
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._session.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    def _send(self, first: int, end: int) -> None:
        # This App has no tasks registered, so the tasks' own max_attempts are passed explicitly.
        specs = [pgqueue.JobSpec(task_for(n), {"n": n}, max_attempts=soak_app.tasks[task_for(n)].max_attempts)
                 for n in range(first, end)]
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = self._session.connection()
                self._app.enqueue_many(conn, specs)
                conn.commit()
                self.confirmed = end
                return
            except DATABASE_ERRORS:
                self._session.close()
                if time.monotonic() > deadline:
                    raise
                # The commit may have landed before the connection broke: the batch is one
                # transaction, so its first job tells.
                if self._landed(first):
                    self.confirmed = end
                    return
                self.retried_batches += 1
                time.sleep(0.2)

    def _landed(self, n: int) -> bool:
        while True:
            try:
                return self._session.batch_landed(ENQUEUED_TASKS, n)
            except DATABASE_ERRORS:
                self._session.close()
                if self.stopping.wait(0.2):
                    raise
