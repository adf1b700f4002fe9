"""Process fixtures for the e2e tests: real ``pgqueue worker`` processes on a real database.

- ``worker_dsn``: the per-test database (``dsn``) plus the ``test_executions`` table the test app
  records executions into.
- ``db``: an autocommit connection to it, for polling from the test.
- ``spawn_worker``: starts ``python -m pgqueue worker --app worker_app:app`` with ``cwd=tests/e2e``,
  short lease (2 s) and poll (0.5 s), JSON logs and output to files under ``tmp_path``. Each worker
  is the leader of its own process group, so teardown can SIGKILL it together with any children
  (``--processes``), whatever the test did to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest
from psycopg.rows import TupleRow

from tests.e2e.worker_app import EXECUTIONS_DDL
from tests.helpers import ProcessGroups, wait_until

E2E_DIR = Path(__file__).resolve().parent
LEASE_SECONDS = 2.0
POLL_SECONDS = 0.5


@dataclass
class WorkerProcess:
    """A ``pgqueue worker`` subprocess and its log files."""

    proc: subprocess.Popen[bytes]
    dsn: str
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log_events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines on stderr (``event`` filters by name); other lines are skipped."""
        found = []
        for line in self.stderr().splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            if event is None or entry.get("event") == event:
                found.append(entry)
        return found

    def broken_json_lines(self) -> list[str]:
        """Log lines that are not one whole JSON object (e.g. two processes' lines merged);
        meaningful once the process has exited, when no line is half written."""
        broken = []
        for line in self.stderr().splitlines():
            if not line.startswith("{"):
                continue
            try:
                json.loads(line)
            except ValueError:
                broken.append(line)
        return broken

    def children(self) -> list[int]:
        """Pids of live child processes (a supervisor's workers)."""
        return [pid for pid, stat in _all_stats().items() if stat.ppid == self.pid and stat.state != "Z"]

    def describe(self) -> str:
        """Exit status and the end of the logs, for assertion messages."""
        return f"pid {self.pid} returncode={self.proc.poll()}\n--- stderr (tail) ---\n{self.stderr()[-4000:]}"


class SpawnWorker(Protocol):
    def __call__(self, dsn: str, *, concurrency: int = ..., processes: int = ..., queues: tuple[str, ...] = ...,
                 lease_seconds: float = ..., poll_seconds: float = ...,
                 grace_seconds: float = ...) -> WorkerProcess: ...


@dataclass(frozen=True)
class _Stat:
    state: str
    ppid: int
    pgrp: int


def _stat(pid: int) -> _Stat | None:
    """State, parent and process group from ``/proc/<pid>/stat`` (Linux), None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ")".
    fields = text[text.rindex(")") + 2:].split()
    return _Stat(state=fields[0], ppid=int(fields[1]), pgrp=int(fields[2]))


def _all_stats() -> dict[int, _Stat]:
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                stats[int(entry.name)] = stat
    return stats


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan's zombie may wait for a reaper)."""
    stat = _stat(pid)
    return stat is not None and stat.state != "Z"


def worker_rows(db: psycopg.Connection[TupleRow]) -> dict[str, int]:
    """Worker id -> pid of every row in ``pgqueue.workers``."""
    return {row[0]: row[1] for row in db.execute("SELECT id, pid FROM pgqueue.workers").fetchall()}


def wait_for_worker_id(db: psycopg.Connection[TupleRow], worker: WorkerProcess, timeout: float = 20.0) -> str:
    """Wait until ``worker`` has registered (heartbeated) and return its worker id."""

    def registered() -> str:
        assert worker.alive(), worker.describe()
        ids = [wid for wid, pid in worker_rows(db).items() if pid == worker.pid]
        return ids[0] if ids else ""

    return wait_until(registered, timeout=timeout, message=f"worker {worker.pid} registered")


@pytest.fixture
def worker_dsn(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute(EXECUTIONS_DDL)
    return dsn


@pytest.fixture
def db(worker_dsn: str) -> Iterator[psycopg.Connection[TupleRow]]:
    with psycopg.connect(worker_dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[SpawnWorker]:
    started: list[WorkerProcess] = []

    def spawn(dsn: str, *, concurrency: int = 10, processes: int = 1, queues: tuple[str, ...] = (),
              lease_seconds: float = LEASE_SECONDS, poll_seconds: float = POLL_SECONDS,
              grace_seconds: float = 10.0) -> WorkerProcess:
        index = len(started)
        argv = [sys.executable, "-m", "pgqueue", "worker", "--app", "worker_app:app",
                "--concurrency", str(concurrency), "--processes", str(processes)]
        for queue in queues:
            argv += ["--queue", queue]
        env = dict(os.environ)
        env.update({
            "PGQUEUE_DSN": dsn,
            "PGQUEUE_EMBEDDED": "0",  # a worker must never fall back to another server
            "PGQUEUE_LEASE_SECONDS": str(lease_seconds),
            "PGQUEUE_POLL_SECONDS": str(poll_seconds),
            "PGQUEUE_SHUTDOWN_GRACE_SECONDS": str(grace_seconds),
            "PGQUEUE_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        })
        env.pop("DATABASE_URL", None)
        proc, stdout_path, stderr_path = groups.start(argv, cwd=E2E_DIR, env=env, name=f"worker-{index}")
        worker = WorkerProcess(proc, dsn, stdout_path, stderr_path)
        started.append(worker)
        return worker

    groups = ProcessGroups(tmp_path)
    yield spawn

    groups.kill_all()
    # Orphaned children die from the SIGKILL above but are reaped by init, not by us.
    leaders = {worker.pid for worker in started}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
            stat.pgrp in leaders and stat.state != "Z" for stat in _all_stats().values()):
        time.sleep(0.05)
