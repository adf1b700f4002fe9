"""The fault suite's processes run ``tests.faults.fault_app`` (``APP_PATH``, or ``PLAIN_APP_PATH``
with no transactional task, hence no pool) from the repository root, with a 10 s lease and a 1 s
poll; executions are recorded in ``fault_executions`` through ``record_dsn`` (default: the worker's
own DSN), so a worker with a restricted role still records them.

The process fixtures (``worker_dsn``, ``db``, ``spawn_worker``, ``run_cli``, ``private_server``) come
from ``tests/plugins/processes.py``. Here:

- ``fault_dsn``: the per-test database with ``fault_executions`` (the same as ``worker_dsn``).
- ``worker_role``: a fresh login role on the shared server, member of ``pgqueue_worker``
  (``sql/roles.sql``), that a test may restrict (timeouts, connection limit). Dropped afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow

from tests.faults.fault_app import EXECUTIONS_DDL
from tests.helpers import REPO_ROOT, admin_connection

# Imported from here by tests written before the shared plugin; new tests import tests.plugins.processes.
from tests.plugins.processes import PrivateServer as PrivateServer
from tests.plugins.processes import ProcessApp
from tests.plugins.processes import RunCli as RunCli
from tests.plugins.processes import SpawnWorker as SpawnWorker
from tests.plugins.processes import WorkerProcess as WorkerProcess
from tests.plugins.processes import completion_events as completion_events
from tests.plugins.processes import job_states as job_states
from tests.plugins.processes import parse_timestamp as parse_timestamp
from tests.plugins.processes import wait_for_registration as wait_for_registration

APP_PATH = "tests.faults.fault_app:app"
PLAIN_APP_PATH = "tests.faults.fault_app:plain_app"  # no transactional task: no pool



@pytest.fixture
def process_app() -> ProcessApp:
    return ProcessApp(APP_PATH, cwd=REPO_ROOT, executions_ddl=EXECUTIONS_DDL, record_env="FAULT_RECORD_DSN",
                      concurrency=4, lease_seconds=10.0, poll_seconds=1.0)


@pytest.fixture
def fault_dsn(worker_dsn: str) -> str:
    return worker_dsn


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


def executions(db: psycopg.Connection[TupleRow]) -> dict[int, int]:
    """Job id -> number of recorded executions (attempts that reached the handler)."""
    rows = db.execute("SELECT job_id, count(*) FROM fault_executions GROUP BY job_id").fetchall()
    return {int(r[0]): int(r[1]) for r in rows}
