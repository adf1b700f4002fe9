"""The chaos loop: a fault plan drawn up front from ``random.Random(seed)``, then played against
the live processes.

The plan (when, which kind, which target, how long a restart stays down) depends only on the
seed, the duration and whether the database may be restarted, so ``--seed`` reproduces it. The
targets a fault finds at that moment (which backends exist) depend on timing; they are picked
with the fault's own seeded draw from a sorted list.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pgqueue._db.soak import terminate_backends
from pgqueue._log import get_logger
from pgqueue._soak.processes import Child

WORKER_SIGKILL = "worker_sigkill"
SCHEDULER_SIGKILL = "scheduler_sigkill"
BACKEND_TERMINATE = "backend_terminate"
DATABASE_RESTART = "database_restart"
KINDS = (WORKER_SIGKILL, SCHEDULER_SIGKILL, BACKEND_TERMINATE, DATABASE_RESTART)

_WEIGHTS = {WORKER_SIGKILL: 4, SCHEDULER_SIGKILL: 1, BACKEND_TERMINATE: 4, DATABASE_RESTART: 1}
# Bounds: faults at least this far apart, database restarts at least a minute apart, and a quiet
# start so the processes are up before the first fault.
_GAP = (2.0, 6.0)
_FIRST_AT = 3.0
_RESTART_SPACING = 60.0
_RESTART_EARLIEST = 10.0


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the start of the run
    kind: str
    draw: int  # seeds the choice of target(s) when the fault fires
    pause: float  # a killed process stays down, or the database stays stopped, this long


def plan_faults(seed: int, duration: float, *, restart_database: bool) -> list[Fault]:
    rng = random.Random(seed)
    kinds = [k for k in KINDS if restart_database or k != DATABASE_RESTART]
    weights = [_WEIGHTS[k] for k in kinds]
    faults: list[Fault] = []
    last_restart = -_RESTART_SPACING
    at = _FIRST_AT + rng.uniform(0, _GAP[0])
    while at < duration:
        kind = rng.choices(kinds, weights)[0]
        if kind == DATABASE_RESTART and (at < _RESTART_EARLIEST or at - last_restart < _RESTART_SPACING):
            kind = BACKEND_TERMINATE
        if kind == DATABASE_RESTART:
            last_restart = at
        faults.append(Fault(at=round(at, 3), kind=kind, draw=rng.randrange(2**32),
                            pause=round(rng.uniform(0.5, 2.0), 3)))
        at += rng.uniform(*_GAP)
    return faults


@dataclass
class ChaosLog:
    """What the chaos loop did, for the books: counts by kind, and every pid it killed."""

    injected: Counter[str] = field(default_factory=Counter)
    backends_terminated: int = 0
    killed_pids: set[int] = field(default_factory=set)
    unexpected_exits: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Chaos(threading.Thread):
    """Plays the plan; between faults it restarts any watched child that exited on its own (and
    notes it).

    Every child is (re)started from this thread, and the thread lives until :meth:`finish`: a
    worker's parent-death signal (``PR_SET_PDEATHSIG``) fires when the *thread* that forked it
    exits, so a thread that ended early would take its workers with it.
    """

    def __init__(self, plan: Sequence[Fault], *, dsn: str, workers: list[Child], schedulers: list[Child],
                 restart_database: Callable[[float], None] | None, started: float) -> None:
        super().__init__(name="soak-chaos", daemon=True)
        self.plan = list(plan)
        self.dsn = dsn
        self.workers = workers
        self.schedulers = schedulers
        self.restart_database = restart_database
        self.started = started
        self.log = ChaosLog()
        self.calm = threading.Event()  # no more faults
        self.done = threading.Event()  # leave the thread
        self.watched: list[Child] = [*workers, *schedulers]
        self._lock = threading.Lock()  # one fault, start or watch pass at a time

    def run(self) -> None:
        for child in self.watched:
            child.start()
        faults = iter(self.plan)
        fault = next(faults, None)
        while not self.done.is_set():
            if fault is not None and not self.calm.is_set() and time.monotonic() - self.started >= fault.at:
                with self._lock:
                    try:
                        self.inject(fault)
                    except Exception as exc:  # noqa: BLE001 - a failed injection is reported, never fatal
                        self.log.errors.append(f"{fault.kind} at {fault.at}s: {type(exc).__name__}: {exc}")
                fault = next(faults, None)
                continue
            with self._lock:
                self.watch()
            self.done.wait(0.2)

    def calm_down(self) -> None:
        """Inject no more faults; returns once a fault in progress is over."""
        self.calm.set()
        with self._lock:
            pass

    def unwatch(self, children: Sequence[Child]) -> None:
        """Stop restarting these children (they are about to be stopped on purpose)."""
        with self._lock:
            self.watched = [c for c in self.watched if c not in children]

    def finish(self) -> None:
        self.done.set()
        self.join()

    def watch(self) -> None:
        for child in self.watched:
            if child.proc is not None and not child.alive():
                self.log.unexpected_exits.append(f"{child.name} pid {child.pid} exited with {child.proc.returncode}")
                get_logger(__name__).warning("soak.unexpected_exit", child=child.name, pid=child.pid,
                                             returncode=child.proc.returncode)
                child.start()

    def inject(self, fault: Fault) -> None:
        pick = random.Random(fault.draw)
        if fault.kind in (WORKER_SIGKILL, SCHEDULER_SIGKILL):
            pool = self.workers if fault.kind == WORKER_SIGKILL else self.schedulers
            if not pool:
                return
            child = pool[pick.randrange(len(pool))]
            pid = child.kill()
            if pid is None:
                return
            self.log.killed_pids.add(pid)
            self.log.injected[fault.kind] += 1
            time.sleep(fault.pause)
            child.start()
        elif fault.kind == BACKEND_TERMINATE:
            chosen = terminate_backends(
                self.dsn, lambda backends: pick.sample(backends, min(len(backends), pick.randint(1, 3))))
            if not chosen:
                return
            self.log.injected[fault.kind] += 1
            self.log.backends_terminated += chosen
        elif fault.kind == DATABASE_RESTART and self.restart_database is not None:
            self.restart_database(fault.pause)
            self.log.injected[fault.kind] += 1
