"""Fixtures for process-level tests: real ``pgqueue`` processes (workers, schedulers, one-off
commands) on a real database.

Every process runs in a session of its own (the leader of its process group, so teardown SIGKILLs
it together with any children, e.g. ``--processes``, whatever the test did to it), with stdout and
stderr in files under ``tmp_path``, and a clean environment: no inherited ``PGQUEUE_*`` (except
``PGQUEUE_HOME``, which ``tests/conftest.py`` points at the test home) or ``DATABASE_URL``, JSON
logs, and never the embedded server.

A suite names the test app its processes run by overriding ``process_app`` in its conftest::

    @pytest.fixture
    def process_app() -> ProcessApp:
        return ProcessApp("worker_app:app", cwd=E2E_DIR, executions_ddl=EXECUTIONS_DDL,
                          concurrency=10, lease_seconds=2.0, poll_seconds=0.5)

Fixtures (registered for the whole suite by ``tests/conftest.py``):

- ``process_app``: the suite's :class:`ProcessApp`; by default none (``worker_dsn`` is ``dsn``).
- ``worker_dsn``: the per-test database (``dsn``) plus the app's executions table.
- ``db``: an autocommit connection to ``worker_dsn``, for polling from the test.
- ``spawn_worker(dsn, ...)``: starts ``python -m pgqueue worker --app <app>``; a :class:`PgqueueProcess`.
- ``spawn_pgqueue(*args, dsn=...)``: any other long-running ``pgqueue`` command (``scheduler``).
- ``run_cli(args, dsn=None)``: one ``pgqueue`` command, run to completion.
- ``private_server``: a PostgreSQL server of the test's own (embedded, fresh ``/tmp`` home),
  migrated, with the app's executions table, for faults that must not disturb the shared server
  (stopping it, changing its configuration). Stopped and deleted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psycopg
import pytest
from psycopg.rows import TupleRow

from pgqueue import _embedded, _migrate
from pgqueue.errors import PgqueueError
from tests.helpers import REPO_ROOT, ProcessGroups, wait_until

Db = psycopg.Connection[TupleRow]
T = TypeVar("T")


@dataclass(frozen=True)
class ProcessApp:
    """The test app a suite's processes run, and the defaults its workers start with."""

    app_path: str | None = None  # ``--app``, resolved from ``cwd``
    cwd: Path = REPO_ROOT
    executions_ddl: str | None = None  # the table the app's handlers record their executions in
    # The environment variable through which the app records executions on another DSN than the
    # worker's (``spawn_worker(..., record_dsn=...)``), e.g. for a worker with a restricted role.
    record_env: str | None = None
    concurrency: int = 4
    lease_seconds: float = 10.0
    poll_seconds: float = 1.0
    grace_seconds: float = 10.0


def clean_env(dsn: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if (k == "PGQUEUE_HOME" or not k.startswith("PGQUEUE_")) and k not in ("DATABASE_URL", "COLUMNS")}
    env.update({"PGQUEUE_EMBEDDED": "0", "PGQUEUE_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"})
    if dsn is not None:
        env["PGQUEUE_DSN"] = dsn
    env.update(extra or {})
    return env


def parse_timestamp(entry: Mapping[str, Any]) -> float:
    """A JSON log line's ``timestamp`` as seconds since the epoch (comparable with ``time.time()``)."""
    return datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00")).timestamp()


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


@dataclass
class PgqueueProcess:
    """A ``pgqueue`` subprocess and its log files."""

    proc: subprocess.Popen[bytes]
    dsn: str | None
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

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit code."""
        self.send(signal.SIGTERM)
        return self.wait(timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log_events(self, *events: str) -> list[dict[str, Any]]:
        """The JSON log lines on stderr (``events`` filters by name); other lines are skipped."""
        found = []
        for line in self.stderr().splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            if not events or entry.get("event") in events:
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
        return f"pid {self.pid} returncode={self.proc.poll()}\n--- stderr (tail) ---\n{self.stderr()[-6000:]}"


# Most process-level tests start workers; the name says so in their signatures.
WorkerProcess = PgqueueProcess


class SpawnWorker(Protocol):
    def __call__(self, dsn: str, *, concurrency: int = ..., processes: int = ..., queues: Sequence[str] = ...,
                 lease_seconds: float = ..., poll_seconds: float = ..., grace_seconds: float = ...,
                 record_dsn: str | None = ..., app_path: str | None = ..., args: Sequence[str] = ...,
                 env: Mapping[str, str] | None = ...) -> PgqueueProcess: ...


class SpawnPgqueue(Protocol):
    def __call__(self, *args: str, dsn: str, env: Mapping[str, str] | None = ...) -> PgqueueProcess: ...


class RunCli(Protocol):
    def __call__(self, args: Sequence[str], *, dsn: str | None = ...,
                 env: Mapping[str, str] | None = ...) -> subprocess.CompletedProcess[str]: ...


# --- databases ---


@pytest.fixture
def process_app() -> ProcessApp:
    return ProcessApp()


@pytest.fixture
def worker_dsn(dsn: str, process_app: ProcessApp) -> str:
    if process_app.executions_ddl:
        with psycopg.connect(dsn, autocommit=True) as setup:
            setup.execute(process_app.executions_ddl.encode())
    return dsn


@pytest.fixture
def db(worker_dsn: str) -> Iterator[Db]:
    with psycopg.connect(worker_dsn, autocommit=True) as connection:
        yield connection


@dataclass
class PrivateServer:
    """A server of one test's own; its port (and so its DSN) survives stop/start."""

    home: Path
    dsn: str

    def stop(self) -> None:
        assert _embedded.stop(self.home)

    def start(self) -> None:
        assert _embedded.ensure_server(self.home) == self.dsn

    def admin(self) -> Db:
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)


@pytest.fixture
def private_server(process_app: ProcessApp) -> Iterator[PrivateServer]:
    home = Path(tempfile.mkdtemp(dir="/tmp", prefix="pgq-private-"))
    # As root the server runs as a service user, who must be able to enter the home we created.
    home.chmod(0o755)
    try:
        server = PrivateServer(home, _embedded.ensure_server(home))
        _migrate.upgrade(server.dsn)
        if process_app.executions_ddl:
            with server.admin() as admin:
                admin.execute(process_app.executions_ddl.encode())
        yield server
    finally:
        with contextlib.suppress(PgqueueError):
            _embedded.stop(home)
        shutil.rmtree(home, ignore_errors=True)


# --- processes ---


@pytest.fixture
def _process_groups(tmp_path: Path) -> Iterator[ProcessGroups]:
    groups = ProcessGroups(tmp_path)
    yield groups
    groups.kill_all()
    # Orphaned children die from the SIGKILL above but are reaped by init, not by us: wait for them.
    leaders = {proc.pid for proc in groups.procs}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
            stat.pgrp in leaders and stat.state != "Z" for stat in _all_stats().values()):
        time.sleep(0.05)


def _given(value: T | None, default: T) -> T:
    return default if value is None else value


@pytest.fixture
def spawn_worker(process_app: ProcessApp, _process_groups: ProcessGroups) -> SpawnWorker:
    def spawn(dsn: str, *, concurrency: int | None = None, processes: int = 1, queues: Sequence[str] = (),
              lease_seconds: float | None = None, poll_seconds: float | None = None,
              grace_seconds: float | None = None, record_dsn: str | None = None, app_path: str | None = None,
              args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> PgqueueProcess:
        app = app_path or process_app.app_path
        assert app is not None, "override the process_app fixture (or pass app_path=) to name the worker's app"
        argv = [sys.executable, "-m", "pgqueue", "worker", "--app", app,
                "--concurrency", str(_given(concurrency, process_app.concurrency))]
        if processes != 1:
            argv += ["--processes", str(processes)]
        for queue in queues:
            argv += ["--queue", queue]
        settings = {
            "PGQUEUE_LEASE_SECONDS": str(_given(lease_seconds, process_app.lease_seconds)),
            "PGQUEUE_POLL_SECONDS": str(_given(poll_seconds, process_app.poll_seconds)),
            "PGQUEUE_SHUTDOWN_GRACE_SECONDS": str(_given(grace_seconds, process_app.grace_seconds)),
        }
        if process_app.record_env:
            settings[process_app.record_env] = record_dsn or dsn
        else:
            assert record_dsn is None, "this suite's app records executions on the worker's own DSN"
        name = f"worker-{len(_process_groups.procs)}"
        proc, stdout_path, stderr_path = _process_groups.start(
            [*argv, *args], cwd=process_app.cwd, env=clean_env(dsn, {**settings, **(env or {})}), name=name)
        return PgqueueProcess(proc, dsn, stdout_path, stderr_path)

    return spawn


@pytest.fixture
def spawn_pgqueue(process_app: ProcessApp, _process_groups: ProcessGroups) -> SpawnPgqueue:
    def spawn(*args: str, dsn: str, env: Mapping[str, str] | None = None) -> PgqueueProcess:
        settings = {"PGQUEUE_LEASE_SECONDS": str(process_app.lease_seconds),
                    "PGQUEUE_POLL_SECONDS": str(process_app.poll_seconds), **(env or {})}
        proc, stdout_path, stderr_path = _process_groups.start(
            [sys.executable, "-m", "pgqueue", *args], cwd=process_app.cwd, env=clean_env(dsn, settings),
            name=f"{args[0] if args else 'pgqueue'}-{len(_process_groups.procs)}")
        return PgqueueProcess(proc, dsn, stdout_path, stderr_path)

    return spawn


@pytest.fixture
def run_cli(process_app: ProcessApp) -> RunCli:
    def run(args: Sequence[str], *, dsn: str | None = None,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pgqueue", *args], cwd=process_app.cwd,
                              env=clean_env(dsn, env), capture_output=True, text=True, timeout=120, check=False)

    return run


# --- polling the database ---


def worker_rows(db: Db) -> dict[str, int]:
    """Worker id -> pid of every row in ``pgqueue.workers``."""
    return {str(row[0]): int(row[1]) for row in db.execute("SELECT id, pid FROM pgqueue.workers").fetchall()}


def wait_for_registration(db: Db, worker: PgqueueProcess, timeout: float = 60.0) -> str:
    """Wait until ``worker`` has written its row in ``pgqueue.workers`` (it heartbeated); return its id."""

    def registered() -> str:
        assert worker.alive(), worker.describe()
        ids = [wid for wid, pid in worker_rows(db).items() if pid == worker.pid]
        return ids[0] if ids else ""

    return wait_until(registered, timeout=timeout, message=f"worker {worker.pid} registered")


def job_states(db: Db) -> dict[int, str]:
    return {int(r[0]): str(r[1]) for r in db.execute("SELECT id, state FROM pgqueue.jobs").fetchall()}


def completion_events(db: Db) -> dict[int, int]:
    """Job id -> number of 'completed' audit events (must be 1 per completed job)."""
    rows = db.execute("SELECT job_id, count(*) FROM pgqueue.job_events WHERE event = 'completed' "
                      "GROUP BY job_id").fetchall()
    return {int(r[0]): int(r[1]) for r in rows}
