"""The listener: wakes the claim loop when a NOTIFY names one of the worker's queues.

LISTEN is an accelerator: the claim loop also polls, so a listener that is down only makes jobs
wait up to the poll interval. It probes its quiet session often, since a listener dropped
unnoticed also drops every notification sent meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from pgqueue._db.errors import DATABASE_ERRORS
from pgqueue._db.notifications import CANCEL_CHANNEL, LIMITS_CHANNEL, ListenSession
from pgqueue._db.sessions import capped_backoff
from pgqueue._humanize import whole_number
from pgqueue._log import get_logger
from pgqueue._worker.background import crash_site

# The listener probes a quiet LISTEN session; no answer within this long means the path is lost.
PROBE_TIMEOUT = 5.0
# Includes pgqueue's own errors: a session ended during a set-up query that the data layer
# translates (DatabaseUnavailable) must be replaced like any other, not end the listener for good
# and leave the worker finding jobs only by polling.
_LISTEN_ERRORS: tuple[type[BaseException], ...] = (*DATABASE_ERRORS, TimeoutError)


class Listener:
    """LISTENs on ``dsn`` until ``stopping()``; calls ``wake()`` for each notification of one of
    ``queues`` (all when None), and once after every (re)connection; calls ``cancel(job id, lease
    token)`` for each running job an operator cancelled (any worker's: the callee checks); calls
    ``listening(True)`` once its LISTEN is in place and ``listening(False)`` when it is lost, and
    ``limits_changed()`` for each announced change to queue or task limits and once after every
    (re)connection."""

    def __init__(self, dsn: str, queues: Sequence[str] | None, *, poll_seconds: float, wake: Callable[[], None],
                 stopping: Callable[[], bool], worker_id: str,
                 cancel: Callable[[int, str], None] | None = None,
                 listening: Callable[[bool], None] | None = None,
                 limits_changed: Callable[[], None] | None = None) -> None:
        self.dsn = dsn
        self.queues = queues
        self.wake = wake
        self.stopping = stopping
        self.probe_every = max(1.0, min(poll_seconds, 5.0))
        self.worker_id = worker_id
        self.cancel = cancel
        self.listening = listening or (lambda _on: None)
        self.limits_changed = limits_changed or (lambda: None)

    async def run(self) -> None:
        log = get_logger("pgqueue.worker", worker_id=self.worker_id)
        failures = 0
        while not self.stopping():
            session: ListenSession | None = None
            try:
                session = await ListenSession.open(self.dsn, answer_timeout=PROBE_TIMEOUT)
                await session.listen()
                # Probe before the server's idle_session_timeout would end the session.
                idle_limit = await session.idle_session_timeout()
                # A quarter, not a half: a busy host may run the probe late, and one miss costs
                # the session and the notifications sent while it is replaced.
                probe = self.probe_every if idle_limit <= 0 else max(0.1, min(self.probe_every, idle_limit / 4))
                if failures:
                    log.info("listener.reconnected")
                failures = 0
                self.listening(True)
                # Anything enqueued, or any limit changed, while we were not listening was not
                # announced to us.
                self.limits_changed()
                self.wake()
                while not self.stopping():
                    async for channel, payload in session.notified(probe):
                        if channel == CANCEL_CHANNEL:
                            self._cancelled(payload)
                        elif channel == LIMITS_CHANNEL:
                            self.limits_changed()
                        elif self.queues is None or payload in self.queues:
                            self.wake()
                            # Let the claimer claim before this session waits again: re-arming the
                            # wait (reader, timeout) would otherwise sit on the wake-up's path.
                            await asyncio.sleep(0)
                    # A quiet connection may be a dead one: probe it, bounded in time.
                    await session.probe()
            except asyncio.CancelledError:
                raise
            except _LISTEN_ERRORS as exc:
                self.listening(False)  # now, not after the backoff below
                failures += 1
                wait = capped_backoff(failures, base=0.25, cap=10.0, doublings=6)
                log.warning("listener.disconnected", error_type=type(exc).__name__, retry_in_s=wait)
                await asyncio.sleep(wait)
            except Exception as exc:  # noqa: BLE001 - supervision: the listener restarts, never dies silently
                self.listening(False)
                failures += 1
                wait = capped_backoff(failures, base=0.25, cap=10.0, doublings=6)
                log.error("worker.part_crashed", part="listener", error_type=type(exc).__name__,
                          at=crash_site(exc), restart_in_s=wait)
                await asyncio.sleep(wait)
            finally:
                self.listening(False)
                if session is not None:
                    await session.close()

    def _cancelled(self, payload: str) -> None:
        raw_id, _, token = payload.partition(":")
        job_id = whole_number(raw_id)  # anyone may NOTIFY the channel: a malformed payload is ignored
        if self.cancel is not None and job_id is not None and token:
            self.cancel(job_id, token)
