"""``--processes N``: a supervisor that runs N worker processes and replaces any that die.

Children are ordinary ``pgqueue worker`` processes. SIGTERM/SIGINT are forwarded, so each child
does its own graceful shutdown; a second signal kills them. A child whose parent disappears
(the supervisor was SIGKILLed) gets SIGTERM from the kernel (PR_SET_PDEATHSIG), so no orphan
goes on claiming work.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time

from pgqueue._db.sessions import capped_backoff
from pgqueue._log import get_logger

_PR_SET_PDEATHSIG = 1
PARENT_ENV = "PGQUEUE_SUPERVISOR_PID"
#: Each child's slot, 0 to N-1, kept by the child that replaces it (``--metrics-port`` adds it).
SLOT_ENV = "PGQUEUE_WORKER_SLOT"


def watch_parent() -> None:
    """In a child: stop when the supervisor dies, via the kernel where possible and by polling."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    expected = int(parent)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass

    def poll() -> None:
        while True:
            if os.getppid() != expected:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.5)

    if os.getppid() != expected:
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=poll, name="parent-watch", daemon=True).start()


class Supervisor:
    """Keeps ``processes`` children running ``argv`` until told to stop."""

    def __init__(self, argv: list[str], processes: int, grace_seconds: float) -> None:
        self.argv = argv
        self.processes = processes
        self.grace_seconds = grace_seconds
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.restarts = 0
        self._wakeup_r: int | None = None

    def _spawn(self, slot: int) -> None:
        env = dict(os.environ, **{PARENT_ENV: str(os.getpid()), SLOT_ENV: str(slot)})
        child = subprocess.Popen(self.argv, env=env)  # noqa: S603 - our own interpreter and arguments
        self.children[slot] = child
        get_logger("pgqueue.supervisor").info("supervisor.child_started", slot=slot, pid=child.pid)

    def _wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, acting on every SIGTERM/SIGINT that arrives meanwhile.

        Signals are read from the wakeup pipe, one byte per delivered signal, rather than handled
        in a Python signal handler: CPython runs a handler once for several deliveries of the
        same signal that arrive before it runs, so a quick second Ctrl-C could be lost.
        """
        if self._wakeup_r is None:  # run() not started: nothing can be signalled yet
            time.sleep(seconds)
            return
        ready, _, _ = select.select([self._wakeup_r], [], [], max(seconds, 0.0))
        if not ready:
            return
        with contextlib.suppress(BlockingIOError):
            for signum in os.read(self._wakeup_r, 64):
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self._signal(signum)

    def _signal(self, signum: int) -> None:
        log = get_logger("pgqueue.supervisor")
        if self.stopping:
            log.warning("supervisor.kill_children", signal=signum)
            for child in self.children.values():
                if child.poll() is None:
                    child.kill()
            os._exit(130)
        self.stopping = True
        log.info("supervisor.stopping", signal=signum)
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def _should_restart(self) -> bool:
        # A signal may have arrived while we slept before the restart.
        return not self.stopping

    def run(self) -> int:
        log = get_logger("pgqueue.supervisor")
        self._wakeup_r, wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(wakeup_w, False)
        signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            # The handler does nothing: it only replaces the default action (exit, or
            # KeyboardInterrupt); _wait() reads each delivery from the wakeup pipe.
            signal.signal(signum, lambda *_: None)
        for slot in range(self.processes):
            self._spawn(slot)
        started_at = {slot: time.monotonic() for slot in self.children}
        failures = dict.fromkeys(self.children, 0)
        stop_deadline: float | None = None
        while True:
            if self.stopping and stop_deadline is None:
                stop_deadline = time.monotonic() + self.grace_seconds + 10
            alive = 0
            for slot, child in list(self.children.items()):
                code = child.poll()
                if code is None:
                    alive += 1
                    continue
                if self.stopping:
                    continue
                # A crash loop (a poison job killing every child) must not spin: back off.
                ran_for = time.monotonic() - started_at[slot]
                failures[slot] = 0 if ran_for > 30 else failures[slot] + 1
                wait = capped_backoff(failures[slot], base=0.5, cap=30.0, doublings=6) if failures[slot] else 0.0
                log.warning("supervisor.child_died", slot=slot, pid=child.pid, exit_code=code, restart_in_s=wait)
                self._wait(wait)
                if self._should_restart():
                    self._spawn(slot)
                    self.restarts += 1
                    started_at[slot] = time.monotonic()
                    alive += 1
            if self.stopping and alive == 0:
                log.info("supervisor.stopped")
                return 0
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                for child in self.children.values():
                    if child.poll() is None:
                        child.kill()
                return 1
            self._wait(0.1)
