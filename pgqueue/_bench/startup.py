"""The ``startup`` scenario: how long a ``pgqueue worker`` takes from spawn to its first job.

Each spawn is a real ``python -m pgqueue worker`` subprocess, as a deployment starts it, on a
database where jobs already wait. Times are ``time.monotonic_ns()``, which on Linux is one clock
for every process (CLOCK_MONOTONIC), so the parent's "before Popen" and a handler's "started"
are comparable:

- spawn -> worker start: the ``timestamp`` of the ``worker.started`` JSON log line on the
  child's stderr, against the wall clock read with the monotonic one at spawn (the moment the
  parent happens to read the line would add its own scheduling delay on a busy machine);
- spawn -> first job: the handler writes ``<pid> <monotonic_ns>`` to a file on its first job.

With ``--processes 2`` every handler waits (up to 10 s) until both children have recorded their
first job, so neither child can drain the queue alone and leave the other with nothing to start.

Spawns run with bytecode, as an installed package does: without it each spawn compiles every
module it imports from source (some 50 ms for pgqueue's alone), which a deployment never pays
twice. The bench writes nothing into the checkout or site-packages for that: the children run
without ``PYTHONDONTWRITEBYTECODE`` and with ``PYTHONPYCACHEPREFIX`` set to a temporary
directory, which one untimed spawn per unit fills first.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pgqueue._bench.context import Context, Unit
from pgqueue._bench.stats import Sample
from pgqueue._bench.workers import QUEUE
from pgqueue._db.sessions import open_connection
from pgqueue.app import App
from pgqueue.jobs import JobSpec
from pgqueue.settings import Settings

TASK = "pgqueue_bench.startup"
#: Timed spawns per unit and repetition (after one untimed warm-up); the unit reports their median.
SPAWNS = 3
CONCURRENCY = 10
_MODULE = "pgqueue_bench_startup_app"
_RECORD_ENV = "PGQUEUE_BENCH_STARTUP_RECORD"
_RELEASE_ENV = "PGQUEUE_BENCH_STARTUP_RELEASE"
NOTE = ("with bytecode, as installed: compiled into a temporary PYTHONPYCACHEPREFIX by one untimed spawn "
        "before the timed ones")

# The user's app module, as small as one can be: what the worker imports beyond it is its own cost.
_APP_SOURCE = f'''
import asyncio
import os
import time

import pgqueue

app = pgqueue.App()
_first = True


@app.task(name={TASK!r}, queue={QUEUE!r})
async def started(job: pgqueue.Job) -> None:
    global _first
    if _first:
        _first = False
        with open(os.environ[{_RECORD_ENV!r}], "a") as record:
            record.write(f"{{os.getpid()}} {{time.monotonic_ns()}}\\n")
    # Hold the slot until the bench has seen every process start a job (or 10 s).
    release = os.environ[{_RELEASE_ENV!r}]
    deadline = time.monotonic() + 10
    while not os.path.exists(release) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
'''


@dataclass
class Spawn:
    """One worker spawn's times, in ms after the parent's ``Popen``, by child pid."""

    worker_started: dict[int, float] = field(default_factory=dict)
    first_job: dict[int, float] = field(default_factory=dict)


def spawn_worker(dsn: str, *, processes: int, concurrency: int = CONCURRENCY, timeout: float = 60.0,
                 python_path: str | None = None, pycache: str | None = None) -> Spawn:
    """Start ``pgqueue worker`` on ``dsn`` with jobs waiting; return when every process started one.

    ``python_path`` goes first on the child's ``PYTHONPATH`` (to time another checkout of pgqueue).
    With ``pycache``, the child reads and writes its bytecode there (``PYTHONPYCACHEPREFIX``), even
    where the environment says ``PYTHONDONTWRITEBYTECODE``; without it, it inherits both settings.

    Raises:
        RuntimeError: a process did not start a job within ``timeout`` seconds, or the worker exited.
    """
    with open_connection(dsn, autocommit=True) as conn:
        # Enough for every slot of every process, so the first process cannot take them all.
        App(dsn, settings=Settings(dsn=dsn)).enqueue_many(
            conn, [JobSpec(TASK, {}, queue=QUEUE) for _ in range(processes * concurrency)])
    with tempfile.TemporaryDirectory(prefix="pgqueue-bench-startup-") as tmp:
        folder = Path(tmp)
        (folder / f"{_MODULE}.py").write_text(_APP_SOURCE)
        record, release = folder / "record", folder / "release"
        record.touch()
        paths = [p for p in (python_path, tmp, os.environ.get("PYTHONPATH")) if p]
        env = dict(os.environ, PGQUEUE_DSN=dsn, PGQUEUE_LOG_FORMAT="json", PYTHONPATH=os.pathsep.join(paths),
                   **{_RECORD_ENV: str(record), _RELEASE_ENV: str(release)})
        if pycache is not None:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = pycache
        argv = [sys.executable, "-m", "pgqueue", "worker", "--app", f"{_MODULE}:app",
                "--concurrency", str(concurrency), "--processes", str(processes)]
        spawn = Spawn()
        begun_wall = time.time()
        begun = time.monotonic_ns()
        child = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,  # noqa: S603
                                 text=True, cwd=tmp)
        reader = threading.Thread(target=_read_log, args=(child, begun_wall, spawn), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + timeout
            while len(spawn.first_job) < processes:
                if time.monotonic() > deadline or child.poll() is not None:
                    raise RuntimeError(f"pgqueue worker --processes {processes}: {len(spawn.first_job)} "
                                       f"process(es) started a job (exit code {child.poll()})")
                time.sleep(0.01)
                for line in record.read_text().splitlines():
                    pid, _, at = line.partition(" ")
                    spawn.first_job[int(pid)] = (int(at) - begun) / 1e6
        finally:
            release.touch()
            _stop(child)
            reader.join(5)
    return spawn


def _read_log(child: subprocess.Popen[str], begun_wall: float, spawn: Spawn) -> None:
    assert child.stderr is not None  # noqa: S101 - set by Popen
    for line in child.stderr:
        try:
            event = json.loads(line)
            if event.get("event") == "worker.started":
                at = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()
                spawn.worker_started[int(event["pid"])] = (at - begun_wall) * 1000
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # not a log line of ours


def _stop(child: subprocess.Popen[str]) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    try:
        child.wait(30)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _unit(processes: int) -> Unit:
    prefix = "startup" if processes == 1 else f"startup_p{processes}"

    def run(ctx: Context) -> list[Sample]:
        spawns: list[Spawn] = []
        with ctx.databases.fresh() as dsn, tempfile.TemporaryDirectory(prefix="pgqueue-bench-pycache-") as pycache:
            ctx.status(f"warm-up spawn (compiles the bytecode): pgqueue worker --processes {processes}")
            spawn_worker(dsn, processes=processes, pycache=pycache)
            for i in range(SPAWNS):
                ctx.status(f"spawn {i + 1} of {SPAWNS}: pgqueue worker --processes {processes}")
                spawns.append(spawn_worker(dsn, processes=processes, pycache=pycache))
        # With several processes: until the last one is up, and how far apart the first jobs are.
        started = [max(s.worker_started.values(), default=float("nan")) for s in spawns]
        first = [max(s.first_job.values()) for s in spawns]
        samples = [Sample(f"{prefix}_worker_ms", "ms", statistics.median(started)),
                   Sample(f"{prefix}_first_job_ms", "ms", statistics.median(first), NOTE)]
        if processes > 1:
            gaps = [max(s.first_job.values()) - min(s.first_job.values()) for s in spawns]
            samples.append(Sample(f"{prefix}_gap_ms", "ms", statistics.median(gaps)))
        return samples

    return Unit(f"startup P={processes}", run)


UNITS = [_unit(1), _unit(2)]
