"""``--processes N``: a supervisor that runs N worker processes and replaces any that die.

Children are forked from the supervisor once it has imported pgqueue's worker modules: a child
then imports only the app (each child its own, after the fork) and starts its worker, instead of
starting a fresh interpreter and importing everything again (about 0.3-0.6 s each, and N of them
at once on a small machine took longer still). The supervisor never imports the app: whatever
the app starts at import, a thread or a connection, is each child's own. With a
:class:`Handshake`, the first child loads the app before the others are forked and says so (with
what the others need to know, the DSN it resolved); if it cannot, it reports its error and the
supervisor stops without starting another, so a broken app fails once.

Forking is safe only while the supervisor has no other thread (a lock held by another thread at
the fork stays locked forever in the child), no event loop and no connection (every child would
share its socket): the supervisor never creates any, and it checks the threads and open sockets
before each fork; if it finds one, children are ordinary ``pgqueue worker`` processes started
with ``argv`` instead.

SIGTERM/SIGINT are forwarded, so each child does its own graceful shutdown; a second signal
kills them. A child whose parent disappears (the supervisor was SIGKILLed) gets SIGTERM from
the kernel (PR_SET_PDEATHSIG), so no orphan goes on claiming work.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol

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


class Child(Protocol):
    """What the supervisor needs of a child: ``subprocess.Popen`` has it, and so has :class:`ForkedChild`."""

    @property
    def pid(self) -> int: ...
    def poll(self) -> int | None: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


class ForkedChild:
    """A child made by ``os.fork``, with the part of ``Popen``'s interface the supervisor uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code as ``Popen`` gives it (``-N`` for signal N), or None while it runs."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: it is gone, how is unknown
                self.returncode = 1
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def thread_count() -> int:
    """This process's threads, those started outside Python (by a C library) included where the OS says."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def open_sockets() -> int:
    """Sockets this process holds beyond stdin/stdout/stderr (which systemd may make sockets), 0 if unknown."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    count = 0
    for fd in fds:
        with contextlib.suppress(OSError, ValueError):
            if int(fd) > 2 and os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
    return count


def fork_hazards() -> list[str]:
    """Why forking now would be unsafe (see the module docstring); empty when it is safe."""
    if not hasattr(os, "fork"):
        return ["no fork on this platform"]
    hazards = []
    if (threads := thread_count()) > 1:
        names = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        hazards.append(f"{threads - 1} other thread(s) {names}")
    if sockets := open_sockets():
        # A connection opened at import would be shared by every child: their messages would mix.
        hazards.append(f"{sockets} open socket(s)")
    return hazards


class Handshake:
    """The first forked child's word that it has started, before the supervisor forks the others.

    The first child calls :meth:`tell` once its app has loaded; the message (the DSN the app
    resolved) is then :attr:`message` in the supervisor, and so in every child forked after it.
    A child that exits before telling failed to start (it printed why): the supervisor then
    starts no other, since each would fail the same way.
    """

    def __init__(self, on_message: Callable[[str], None] | None = None) -> None:
        self._read_fd: int | None
        self._write_fd: int | None
        self._read_fd, self._write_fd = os.pipe()
        self._on_message = on_message
        self.message: str | None = None

    def tell(self, message: str) -> None:
        """In the first child: say it started (a no-op in any other process)."""
        fd, self._write_fd = self._write_fd, None
        if fd is not None:
            with os.fdopen(fd, "wb") as out:
                out.write(message.encode())

    def _forked_first(self, in_child: bool) -> None:
        # Each end stays in one process only: the first child writes, the supervisor reads.
        fd = self._read_fd if in_child else self._write_fd
        if fd is not None:
            os.close(fd)
        if in_child:
            self._read_fd = None
        else:
            self._write_fd = None

    def _close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            if fd is not None:
                os.close(fd)
        self._read_fd = self._write_fd = None


class Supervisor:
    """Keeps ``processes`` children running until told to stop.

    A child runs ``target()`` in a fork of this process (its return value is the exit code) when
    ``target`` is given and forking is safe, and is ``argv`` started afresh otherwise. With a
    ``handshake``, the others are started once the first (forked) child has told it started.
    """

    def __init__(self, argv: list[str], processes: int, grace_seconds: float,
                 target: Callable[[], int] | None = None, handshake: Handshake | None = None) -> None:
        self.argv = argv
        self.processes = processes
        self.grace_seconds = grace_seconds
        self.target = target
        self.handshake = handshake
        self.children: dict[int, Child] = {}
        self.stopping = False
        self.restarts = 0
        self._wakeup_r: int | None = None
        self._wakeup_w: int | None = None

    def _spawn(self, slot: int, *, announce: bool = True) -> None:
        log = get_logger("pgqueue.supervisor")
        child: Child
        hazards = fork_hazards() if self.target is not None else []
        if self.target is not None and not hazards:
            child = self._fork(slot, self.target)
            if announce:
                log.info("supervisor.child_started", slot=slot, pid=child.pid, start="fork")
        else:
            if self.target is not None:
                log.info("supervisor.fork_unsafe", hazards=hazards,
                         reason="importing the app left these behind: children start as new processes")
                self.target = None  # what the app started stays: start the rest the same way
            env = dict(os.environ, **{PARENT_ENV: str(os.getpid()), SLOT_ENV: str(slot)})
            child = subprocess.Popen(self.argv, env=env)  # noqa: S603 - our own interpreter and arguments
            log.info("supervisor.child_started", slot=slot, pid=child.pid, start="exec")
        self.children[slot] = child

    def _fork(self, slot: int, target: Callable[[], int]) -> ForkedChild:
        # Buffered output would otherwise be written twice, by the supervisor and by the child.
        sys.stdout.flush()
        sys.stderr.flush()
        # A signal that arrives in the child before it has its own handlers must wait for them:
        # the supervisor's would write it into the supervisor's wakeup pipe, which the child shares.
        signals = {signal.SIGTERM, signal.SIGINT}
        supervisor = os.getpid()  # read before the fork: the child's getppid() may already be a reaper's
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
            raise
        if pid:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
            if self.handshake is not None:
                self.handshake._forked_first(in_child=False)
            return ForkedChild(pid)
        code = 1
        try:
            if self.handshake is not None:
                self.handshake._forked_first(in_child=True)
            self._become_child(slot, supervisor)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
            code = target()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except KeyboardInterrupt:
            code = 130
        except BaseException as exc:  # noqa: BLE001 - the child must never return into the supervisor's loop
            with contextlib.suppress(BaseException):
                get_logger("pgqueue.supervisor").error("supervisor.child_crashed", error_type=type(exc).__name__)
        finally:
            # What the interpreter does at exit, as an exec'd child did (an exporter flushing its
            # spans, say); then leave without unwinding into the supervisor's frames.
            with contextlib.suppress(BaseException):
                atexit._run_exitfuncs()
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _become_child(self, slot: int, supervisor: int) -> None:
        """In a forked child: drop the supervisor's signal handling and say whose child this is."""
        signal.set_wakeup_fd(-1)
        for fd in (self._wakeup_r, self._wakeup_w):
            if fd is not None:
                os.close(fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ[PARENT_ENV] = str(supervisor)
        os.environ[SLOT_ENV] = str(slot)

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
        if ready:
            self._read_signals()

    def _read_signals(self) -> None:
        assert self._wakeup_r is not None  # noqa: S101 - only called once run() made the pipe
        with contextlib.suppress(BlockingIOError):
            for signum in os.read(self._wakeup_r, 64):
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self._signal(signum)

    def _await_handshake(self, handshake: Handshake) -> int | None:
        """Wait for the first child's word (None: start the others) or its exit without one: then
        its exit code, and no other child is started. Signals are acted on meanwhile."""
        log = get_logger("pgqueue.supervisor")
        first = self.children[0]
        received = b""
        try:
            if isinstance(first, ForkedChild) and handshake._read_fd is not None:
                assert self._wakeup_r is not None  # noqa: S101 - run() made the pipe
                while True:
                    ready, _, _ = select.select([handshake._read_fd, self._wakeup_r], [], [])
                    if self._wakeup_r in ready:
                        self._read_signals()
                    if handshake._read_fd in ready:
                        chunk = os.read(handshake._read_fd, 4096)
                        if not chunk:
                            break
                        received += chunk
        finally:
            handshake._close()
        if not isinstance(first, ForkedChild):  # started afresh (forking was unsafe): it said so itself
            return None
        if received:
            handshake.message = received.decode()
            if handshake._on_message is not None:
                handshake._on_message(handshake.message)
            log.info("supervisor.child_started", slot=0, pid=first.pid, start="fork")
            return None
        if self.stopping:
            return None  # a signal stopped it: run() waits for it as for any child
        _, status = os.waitpid(first.pid, 0)
        first.returncode = os.waitstatus_to_exitcode(status)
        return first.returncode or 1

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
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            # The handler does nothing: it only replaces the default action (exit, or
            # KeyboardInterrupt); _wait() reads each delivery from the wakeup pipe.
            signal.signal(signum, lambda *_: None)
        handshake = self.handshake
        self._spawn(0, announce=handshake is None)
        self.handshake = None  # only the first child's fork takes part in it
        if handshake is not None:
            failed = self._await_handshake(handshake)
            if failed is not None:
                return failed
        for slot in range(1, self.processes):
            if self.stopping:  # told to stop while the first child was starting
                break
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
                killed = []
                for slot, child in self.children.items():
                    if child.poll() is None:
                        log.warning("supervisor.child_killed", slot=slot, pid=child.pid,
                                    reason=f"still running {self.grace_seconds + 10:g}s after the stop signal")
                        child.kill()
                        killed.append(child)
                reap_by = time.monotonic() + 2  # reap them: no zombie left behind for PID 1
                while any(child.poll() is None for child in killed) and time.monotonic() < reap_by:
                    time.sleep(0.02)
                return 1
            self._wait(0.1)
