"""The shutdown grace holds even when the event loop is blocked.

The worker's graceful shutdown (stop claiming, give running jobs the grace, release the rest) runs
on its event loop. An ``async def`` handler that calls blocking code (``time.sleep``, a blocking
client library: a common mistake) stops that loop, and with it everything on it: SIGTERM would
wait for the handler, and only the orchestrator's SIGKILL and then the lease expiry would ever
hand its job back. So, in a worker that handles the signals:

- :class:`StopSignals` reads SIGTERM/SIGINT in a thread of its own, from the wakeup fd that the
  C-level signal handler writes: neither the loop nor the main thread has to run for a signal to
  be seen.
- The first signal starts a :class:`Watchdog` thread. If the worker's run has not ended by the
  grace (plus a margin) and the loop does not answer, it releases the running jobs on a session
  of its own, with the loop's own release statement (the lease token fences it: a job whose
  outcome the loop wrote meanwhile, or that the loop released itself, is left alone, and an
  outcome the loop writes afterwards is refused), and ends the process. A loop that answers is
  shutting down by itself (slowly, in a database outage say): the watchdog leaves it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

from pgqueue._db.errors import DATABASE_ERRORS
from pgqueue._db.jobs import JobStore
from pgqueue._db.sessions import ReconnectingSession
from pgqueue._log import get_logger
from pgqueue._worker.acker import Tally, described
from pgqueue._worker.background import SessionThread
from pgqueue.jobs import Job

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# After the grace: the loop's own path (cancel, write the outcomes, release) takes a few hundred ms.
_MARGIN = 0.5
# How long a loop has to answer before it counts as blocked.
_ANSWER_SECONDS = 1.5
_STOP_BYTE = 0  # no signal is numbered 0: tells the reader thread to end


class StopSignals(threading.Thread):
    """SIGTERM and SIGINT, each passed to ``on_signal`` (in this thread) as it is delivered.

    Every delivery is one byte in the wakeup fd, so a quick second signal is never merged into
    the first. Other signals whose bytes arrive (an event loop's ``add_signal_handler`` for
    another signal) are passed on to the wakeup fd that was there before, and so is a stop signal
    that the code on the loop has since taken for itself (its own ``add_signal_handler``): it is
    that code's now.
    """

    def __init__(self, on_signal: Callable[[int], None]) -> None:
        super().__init__(name="pgqueue-signals", daemon=True)
        self._on_signal = on_signal
        self._read_fd, self._write_fd = os.pipe()
        # The C-level handler writes without blocking; this thread reads blocking, so no
        # select() (limited to fds below 1024, which a busy process in-app may be past).
        os.set_blocking(self._write_fd, False)
        self._previous_fd = -1
        self._previous_handlers: dict[int, signal._HANDLER] = {}
        # One bound method: compared by identity with what signal.getsignal() returns.
        self._handler: Callable[[int, FrameType | None], None] = self._handle
        self._uninstalling = False

    def install(self) -> None:
        """Take SIGTERM and SIGINT over and start reading them (in the main thread only)."""
        try:
            self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        except ValueError as exc:  # not the main thread (or a platform without this): nothing was taken over
            os.close(self._read_fd)
            os.close(self._write_fd)
            raise RuntimeError(f"cannot handle SIGTERM/SIGINT here ({exc}); in a thread other than the main "
                               "one, pass install_signal_handlers=False and call stop()") from exc
        for signum in STOP_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._handler)
        self.start()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        """The Python-level handler (main thread): replaces the default action (exit,
        KeyboardInterrupt); the signal itself is read from the wakeup fd by this thread.

        Unless the wakeup fd is no longer ours: ``loop.add_signal_handler`` (for any signal) sets
        the loop's own, and removing a loop's last handler unsets it, so code on the worker's loop
        could leave the worker deaf to SIGTERM. Then this delivery never reached the reader: the
        fd is taken back (the other signals are passed on to the new one) and the signal with it.
        """
        if self._uninstalling:
            return
        try:
            previous = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        except (ValueError, OSError):
            return
        if previous != self._write_fd:
            self._previous_fd = previous
            with contextlib.suppress(OSError):
                os.write(self._write_fd, bytes([signum]))

    def uninstall(self) -> None:
        """Give the signals back to what handled them before :meth:`install`; end the thread.

        What code on the loop installed meanwhile for itself (its own SIGTERM handler, its wakeup
        fd) stays.
        """
        self._uninstalling = True
        for signum, handler in self._previous_handlers.items():
            if signal.getsignal(signum) is self._handler:
                # None: a handler installed outside Python, which cannot be put back.
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        current = signal.set_wakeup_fd(self._previous_fd)
        if current != self._write_fd:  # not ours any more: leave it to whoever set it
            signal.set_wakeup_fd(current)
        with contextlib.suppress(OSError):
            os.write(self._write_fd, bytes([_STOP_BYTE]))
        # The thread closes the pipe when it ends (no fd left behind if it is slow to).
        self.join(2)

    def run(self) -> None:
        while True:
            for signum in os.read(self._read_fd, 64):
                if signum == _STOP_BYTE:
                    os.close(self._read_fd)
                    os.close(self._write_fd)
                    return
                if signum in STOP_SIGNALS and signal.getsignal(signum) is self._handler:
                    try:
                        self._on_signal(signum)
                    except Exception as exc:  # noqa: BLE001 - this thread must go on reading the signals
                        get_logger("pgqueue.worker").error("worker.signal_failed", signal=signum,
                                                           error_type=type(exc).__name__)
                elif self._previous_fd >= 0:
                    with contextlib.suppress(OSError):
                        os.write(self._previous_fd, bytes([signum]))


class Watchdog(threading.Thread):
    """Started at the stop signal: at ``grace_seconds`` (plus a margin), if ``finished`` is not
    set and ``loop`` does not answer, releases the jobs and ends the process with ``exit_code``.

    Args:
        dsn: the database (None: the worker never got as far as connecting, so has no job).
        running: the jobs running now (read from this thread).
        buffered: the prefetched jobs not started yet.
        background: the worker's threads with sessions (heartbeat, maintenance): stopped, so the
            worker deregisters and resigns as on the way out of a normal stop.
        exit_hooks: run before the process ends (the CLI ends a handler's child processes).
    """

    def __init__(self, *, dsn: str | None, worker_id: str, grace_seconds: float, loop: asyncio.AbstractEventLoop,
                 finished: threading.Event, running: Callable[[], list[Job]], buffered: Callable[[], list[Job]],
                 background: Callable[[], Sequence[SessionThread]], tally: Tally,
                 exit_hooks: Sequence[Callable[[], object]], exit_code: int = 0) -> None:
        super().__init__(name="pgqueue-watchdog", daemon=True)
        self.dsn = dsn
        self.worker_id = worker_id
        self.grace_seconds = grace_seconds
        self.loop = loop
        self.finished = finished
        self._running = running
        self._buffered = buffered
        self._background = background
        self.tally = tally
        self.exit_hooks = exit_hooks
        self.exit_code = exit_code
        self._started_at = time.monotonic()

    def run(self) -> None:
        deadline = self._started_at + self.grace_seconds + _MARGIN
        while True:
            # Asked _ANSWER_SECONDS before the deadline, a loop still silent at the deadline is blocked.
            if self.finished.wait(max(0.0, deadline - _ANSWER_SECONDS - time.monotonic())):
                return
            answered = threading.Event()
            try:
                self.loop.call_soon_threadsafe(answered.set)
            except RuntimeError:  # the loop is closed: the run is over, and it released its jobs itself
                return
            deadline = max(deadline, time.monotonic() + _ANSWER_SECONDS)
            if not answered.wait(max(0.0, deadline - time.monotonic())):
                break
            # The loop is free: it is shutting down by itself (slowly: a database outage, say). Ask
            # again at the deadline, should a handler block it from then on.
            if self.finished.wait(max(0.0, deadline - time.monotonic())):
                return
        if not self.finished.is_set():
            self._take_over()

    def _take_over(self) -> None:
        log = get_logger("pgqueue.worker", worker_id=self.worker_id)
        running = self._running()
        log.warning(
            "worker.loop_blocked", jobs=described(running), grace_s=self.grace_seconds,
            stopping_for_s=round(time.monotonic() - self._started_at, 1),
            reason="the event loop is blocked (an async handler running blocking code: run such code in a "
                   "sync handler); the running jobs are released and the process exits")
        jobs = running + self._buffered()
        if jobs and self.dsn is not None:
            self._release(jobs, self.dsn)
        threads = list(self._background())
        for thread in threads:
            thread.stop()
        for thread in threads:
            thread.join(2)
        if self.finished.is_set():
            # The loop came back and ended the run meanwhile (the lease tokens fenced whichever
            # release came second): what follows run() in the caller is not ours to cut short.
            return
        for hook in self.exit_hooks:
            with contextlib.suppress(Exception):
                hook()
        log.info("worker.stopped", completed=self.tally.completed, failed=self.tally.failed, loop_blocked=True)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(self.exit_code)

    def _release(self, jobs: list[Job], dsn: str) -> None:
        """What the loop's release (:meth:`~pgqueue._worker.acker.Acker.release`) does, from this
        thread: three tries, then the leases expire and the rescuer hands the jobs back instead."""
        log = get_logger("pgqueue.worker", worker_id=self.worker_id)
        session = ReconnectingSession(dsn, "watchdog", log=get_logger("pgqueue.worker", role="watchdog"))
        unfinished = [(job.id, job.lease_token) for job in jobs]
        try:
            for attempt in range(3):
                try:
                    released = session.run(lambda conn: JobStore(conn).release_jobs(unfinished))
                except DATABASE_ERRORS as exc:
                    session.close()
                    log.warning("database.unavailable", role="watchdog", error_type=type(exc).__name__,
                                attempt=attempt + 1)
                    time.sleep(0.5)
                    continue
                log.info("worker.released", released=described(jobs, released))
                return
        finally:
            session.close()
