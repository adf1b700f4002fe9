"""The pruner: retention in the worker (see :mod:`pgqueue._retention`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pgqueue._db.errors import DriverError, first_line
from pgqueue._db.sessions import session_broken
from pgqueue._log import get_logger
from pgqueue._retention import BATCH_SIZE, RetentionPolicy, Vacuumer, prune
from pgqueue.errors import PgqueueError

if TYPE_CHECKING:
    from pgqueue._db.types import PsycopgConnection


class Pruner:
    """Prune at most every ``interval`` seconds, at most ``max_batches`` batches per maintenance
    tick so staging and rescue never wait long, and vacuum ``pgqueue.jobs`` when nothing else does
    (checked every ``vacuum_check`` seconds)."""

    ACTOR = "maintenance"

    def __init__(self, policy: RetentionPolicy, interval: float, *, batch_size: int = BATCH_SIZE,
                 max_batches: int = 4, vacuum_check: float | None = None) -> None:
        self.policy = policy
        self.interval = interval
        self.batch_size = batch_size
        self.max_batches = max_batches
        self.vacuum_check = vacuum_check if vacuum_check is not None else min(interval, 10.0)
        self.vacuumer = Vacuumer()
        self._last_prune = float("-inf")
        self._last_vacuum_check = float("-inf")
        self._unfinished = False

    def run(self, conn: PsycopgConnection) -> None:
        now = time.monotonic()
        log = get_logger("pgqueue.retention")
        try:
            if self._unfinished or now - self._last_prune >= self.interval:
                self._prune(conn, log)
            if now - self._last_vacuum_check >= self.vacuum_check:
                self._last_vacuum_check = now
                decision = self.vacuumer.maybe_vacuum(conn)
                if decision.vacuumed:
                    log.info("retention.vacuumed", table="pgqueue.jobs", dead_rows=decision.dead,
                             live_rows=decision.live, duration_ms=round((time.monotonic() - now) * 1000))
        except (DriverError, PgqueueError) as exc:
            if session_broken(conn):
                raise  # the database went away: the maintenance loop reconnects
            # Anything else (a role without DELETE on pgqueue.jobs) must not stop rescue and staging.
            self._unfinished = False
            log.warning("retention.failed", error_type=type(exc).__name__, error=first_line(exc))

    def _prune(self, conn: PsycopgConnection, log: Any) -> None:
        if not self._unfinished:
            self._last_prune = time.monotonic()
        report = prune(conn, self.policy, self.ACTOR, batch_size=self.batch_size, max_batches=self.max_batches,
                       record_empty=False)
        self._unfinished = not report.finished
        self.vacuumer.deleted_since_vacuum += report.total
        if report.total:
            log.info("retention.pruned", **report.counts(), finished=report.finished)
