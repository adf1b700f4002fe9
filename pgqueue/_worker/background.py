"""Background threads of a worker process, each with its own session so that a handler blocking
the event loop or every thread of the pool cannot stop them: the heartbeat
(:mod:`pgqueue._worker.heartbeat`) and maintenance (:mod:`pgqueue._worker.maintenance`).
"""

from __future__ import annotations

import contextlib
import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from pgqueue._db.errors import DriverError, first_line
from pgqueue._db.sessions import ReconnectingSession, capped_backoff
from pgqueue._log import get_logger
from pgqueue.errors import PgqueueError

if TYPE_CHECKING:
    from pgqueue._db.types import PsycopgConnection


T = TypeVar("T")


def read_loop_state(read: Callable[[], list[T]]) -> list[T]:
    """``read()`` from a background thread: a copy of a collection the event loop owns, tried
    again if the loop changed it meanwhile ("changed size during iteration"); empty after three
    tries, which only delays what the reader checks to its next round."""
    for _ in range(3):
        try:
            return read()
        except RuntimeError:
            continue
    return []


def crash_site(exc: BaseException) -> str:
    """Where ``exc`` was raised (file:line in function), for a part's crash log. Neither the message
    nor a traceback is logged: either may quote a job's payload, which must never reach the logs."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    frame = frames[-1]
    return f"{frame.filename}:{frame.lineno} in {frame.name}"


class SessionThread(threading.Thread):
    """A daemon thread that runs ``tick`` every ``interval`` seconds on its own session,
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
        #: Set when a tick failed; a subclass may clear it in a later tick, on a working session.
        self.outage = False

    def tick(self, conn: PsycopgConnection) -> None:
        raise NotImplementedError

    def on_stop(self, conn: PsycopgConnection) -> None:
        """Last words on the way out (deregister, resign); errors are ignored."""

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        log = get_logger(f"pgqueue.{self.name}")
        failures = 0
        while not self.stopping.is_set():
            try:
                # A session the server ended while idle (idle_session_timeout, pg_terminate_backend)
                # is replaced at once; failing on a fresh session is the database being unavailable.
                self.session.run(self.tick)
                if failures:
                    log.info("database.reconnected", thread=self.name)
                failures = 0
                self.healthy.set()
                wait = self.interval
            except (DriverError, PgqueueError) as exc:
                failures += 1
                self.healthy.clear()
                self.outage = True
                wait = capped_backoff(failures, base=0.5, cap=min(10.0, self.interval * 4), doublings=5)
                log.warning("database.unavailable", thread=self.name, error_type=type(exc).__name__,
                            error=first_line(exc), retry_in_s=wait)
                self.session.close()
            except Exception as exc:  # noqa: BLE001 - supervision: a bug in one tick must not end the thread
                # A thread that died here would die silently: the heartbeat's worker would keep
                # claiming while its lease ran out and its jobs were rescued under it. Log, start
                # over on a fresh session, and keep going.
                failures += 1
                self.healthy.clear()
                wait = capped_backoff(failures, base=0.5, cap=min(10.0, self.interval * 4), doublings=5)
                log.error("worker.part_crashed", part=self.name, error_type=type(exc).__name__,
                          at=crash_site(exc), restart_in_s=wait)
                self.session.close()
            self.stopping.wait(wait)
        with contextlib.suppress(DriverError, PgqueueError):
            self.on_stop(self.session.get())
        self.session.close()
