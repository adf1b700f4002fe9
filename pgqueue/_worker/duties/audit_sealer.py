"""The audit sealer: seals the trail (see :mod:`pgqueue._audit`) at most every ``interval`` seconds."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pgqueue._audit import seal_pending
from pgqueue._db.errors import DriverError, first_line
from pgqueue._db.sessions import session_broken
from pgqueue._log import get_logger
from pgqueue.errors import PgqueueError

if TYPE_CHECKING:
    from pgqueue._db.types import PsycopgConnection


class AuditSealer:
    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self._last = 0.0

    def run(self, conn: PsycopgConnection) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        log = get_logger("pgqueue.audit")
        try:
            report = seal_pending(conn)
        except (DriverError, PgqueueError) as exc:
            if session_broken(conn):
                raise  # the database went away: the maintenance loop reconnects
            # Anything else (a role without rights on audit_seals) must not stop rescue and staging.
            log.warning("audit.seal_failed", error_type=type(exc).__name__, error=first_line(exc))
            return
        if report.seals:
            log.debug("audit.sealed", seals=report.seals, events=report.events)
