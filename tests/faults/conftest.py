"""Fixtures for the fault tests: real ``pgqueue worker`` processes, private servers, restricted roles.

- ``fault_dsn``: the per-test database (``dsn``) plus the ``fault_executions`` table of the test app.
- ``private_server``: a PostgreSQL server of the test's own (``pgqueue._embedded`` under a fresh
  ``/tmp`` home), migrated, for faults that must not disturb the shared server: stopping it,
  changing its configuration. Stopped and deleted afterwards.
- ``worker_role``: a fresh login role on the shared server, member of ``pgqueue_worker``
  (``sql/roles.sql``), that a test may restrict (timeouts, connection limit). Dropped afterwards.
- ``spawn_worker``: starts ``python -m pgqueue worker --app tests.faults.fault_app:app`` (or
  ``plain_app``) with JSON logs to files under ``tmp_path``; SIGKILLed with its process group at
  teardown. Executions are recorded through ``record_dsn`` (default: the worker's own DSN).
- ``run_cli``: runs one ``pgqueue`` command and returns the completed process.
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
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow

from pgqueue import _embedded, _migrate
from pgqueue.errors import PgqueueError
from tests.faults.fault_app import EXECUTIONS_DDL
from tests.helpers import REPO_ROOT, ProcessGroups, admin_connection, wait_until

APP_PATH = "tests.faults.fault_app:app"
PLAIN_APP_PATH = "tests.faults.fault_app:plain_app"  # no transactional task: no pool


def _clean_env(dsn: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGQUEUE_") and k != "DATABASE_URL"}
    env.update({"PGQUEUE_EMBEDDED": "0", "PGQUEUE_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"})
    if dsn is not None:
        env["PGQUEUE_DSN"] = dsn
    return env


# --- databases ---


@pytest.fixture
def fault_dsn(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute(EXECUTIONS_DDL)
    return dsn


@pytest.fixture
def db(fault_dsn: str) -> Iterator[psycopg.Connection[TupleRow]]:
    with psycopg.connect(fault_dsn, autocommit=True) as connection:
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

    def admin(self) -> psycopg.Connection[TupleRow]:
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)


@pytest.fixture
def private_server() -> Iterator[PrivateServer]:
    home = Path(tempfile.mkdtemp(dir="/tmp", prefix="pgq-faults-"))
    # As root the server runs as a service user, who must be able to enter the home we created.
    home.chmod(0o755)
    try:
        server = PrivateServer(home, _embedded.ensure_server(home))
        _migrate.upgrade(server.dsn)
        with server.admin() as admin:
            admin.execute(EXECUTIONS_DDL)
        yield server
    finally:
        with contextlib.suppress(PgqueueError):
            _embedded.stop(home)
        shutil.rmtree(home, ignore_errors=True)


@dataclass(frozen=True)
class WorkerRole:
    name: str
    dsn: str  # the per-test database, connecting as this role


def role_dsn(dsn: str, user: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, user=user)


def role_backends(db: psycopg.Connection[TupleRow], role: str) -> list[tuple[int, str]]:
    """(pid, application_name) of the role's client backends, on the whole server."""
    rows = db.execute("SELECT pid, application_name FROM pg_stat_activity WHERE usename = %s "
                      "AND backend_type = 'client backend'", [role]).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


@pytest.fixture
def worker_role(fault_dsn: str, pg_server_dsn: str) -> Iterator[WorkerRole]:
    name = f"pgq_faults_{uuid.uuid4().hex[:12]}"
    roles_sql = (REPO_ROOT / "sql" / "roles.sql").read_text()
    with admin_connection(pg_server_dsn) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    try:
        with psycopg.connect(fault_dsn, autocommit=True) as setup:
            # The least-privilege grants a deployment would use (idempotent; roles are cluster-wide).
            setup.execute(roles_sql.encode())
            setup.execute(sql.SQL("GRANT pgqueue_worker TO {}").format(sql.Identifier(name)))
            # Transactional test tasks write their execution row on the worker's own connection.
            setup.execute(sql.SQL("GRANT INSERT ON fault_executions TO {}").format(sql.Identifier(name)))
        yield WorkerRole(name, role_dsn(fault_dsn, name))
    finally:
        with admin_connection(pg_server_dsn) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [name])
        with psycopg.connect(fault_dsn, autocommit=True) as cleanup:
            cleanup.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        with admin_connection(pg_server_dsn) as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


# --- processes ---


def parse_timestamp(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00")).timestamp()


@dataclass
class WorkerProcess:
    """A ``pgqueue worker`` subprocess and its log files."""

    proc: subprocess.Popen[bytes]
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

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

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def describe(self) -> str:
        """Exit status and the end of the logs, for assertion messages."""
        return f"pid {self.pid} returncode={self.proc.poll()}\n--- stderr (tail) ---\n{self.stderr()[-6000:]}"


class SpawnWorker(Protocol):
    def __call__(self, dsn: str, *, concurrency: int = ..., lease_seconds: float = ...,
                 poll_seconds: float = ..., grace_seconds: float = ...,
                 record_dsn: str | None = ..., app_path: str = ...) -> WorkerProcess: ...


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[SpawnWorker]:
    started: list[WorkerProcess] = []

    def spawn(dsn: str, *, concurrency: int = 4, lease_seconds: float = 10.0, poll_seconds: float = 1.0,
              grace_seconds: float = 10.0, record_dsn: str | None = None,
              app_path: str = APP_PATH) -> WorkerProcess:
        argv = [sys.executable, "-m", "pgqueue", "worker", "--app", app_path, "--concurrency", str(concurrency)]
        env = _clean_env(dsn)
        env.update({
            "PGQUEUE_LEASE_SECONDS": str(lease_seconds),
            "PGQUEUE_POLL_SECONDS": str(poll_seconds),
            "PGQUEUE_SHUTDOWN_GRACE_SECONDS": str(grace_seconds),
            "FAULT_RECORD_DSN": record_dsn or dsn,
        })
        proc, _, stderr_path = groups.start(argv, cwd=REPO_ROOT, env=env, name=f"worker-{len(started)}")
        worker = WorkerProcess(proc, stderr_path)
        started.append(worker)
        return worker

    groups = ProcessGroups(tmp_path)
    yield spawn

    groups.kill_all()


RunCli = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


@pytest.fixture
def run_cli() -> RunCli:
    def run(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pgqueue", *args], cwd=REPO_ROOT, env=_clean_env(None),
                              capture_output=True, text=True, timeout=120, check=False)

    return run


# --- polling the database ---


def wait_for_registration(db: psycopg.Connection[TupleRow], worker: WorkerProcess, timeout: float = 60.0) -> str:
    """Wait until ``worker`` has written its row in ``pgqueue.workers``; return its worker id."""

    def registered() -> str | None:
        assert worker.alive(), worker.describe()
        row = db.execute("SELECT id FROM pgqueue.workers WHERE pid = %s", [worker.pid]).fetchone()
        return None if row is None else str(row[0])

    worker_id = wait_until(registered, timeout=timeout, message=f"worker {worker.pid} registered")
    assert worker_id is not None
    return worker_id


def job_states(db: psycopg.Connection[TupleRow]) -> dict[int, str]:
    return {int(r[0]): str(r[1]) for r in db.execute("SELECT id, state FROM pgqueue.jobs").fetchall()}


def executions(db: psycopg.Connection[TupleRow]) -> dict[int, int]:
    """Job id -> number of recorded executions (attempts that reached the handler)."""
    rows = db.execute("SELECT job_id, count(*) FROM fault_executions GROUP BY job_id").fetchall()
    return {int(r[0]): int(r[1]) for r in rows}


def completion_events(db: psycopg.Connection[TupleRow]) -> dict[int, int]:
    """Job id -> number of 'completed' audit events (must be 1 per completed job)."""
    rows = db.execute("SELECT job_id, count(*) FROM pgqueue.job_events WHERE event = 'completed' "
                      "GROUP BY job_id").fetchall()
    return {int(r[0]): int(r[1]) for r in rows}
