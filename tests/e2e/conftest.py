"""The e2e suite's processes run ``worker_app.py`` (``--app worker_app:app``, ``cwd=tests/e2e``)
with a short lease (2 s) and poll (0.5 s); executions are recorded in ``test_executions``.

The fixtures (``worker_dsn``, ``db``, ``spawn_worker``, ``spawn_pgqueue``, ``run_cli``,
``private_server``) come from ``tests/plugins/processes.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.worker_app import EXECUTIONS_DDL

# Imported from here by tests written before the shared plugin; new tests import tests.plugins.processes.
from tests.plugins.processes import ProcessApp
from tests.plugins.processes import SpawnWorker as SpawnWorker
from tests.plugins.processes import WorkerProcess as WorkerProcess
from tests.plugins.processes import is_running as is_running
from tests.plugins.processes import worker_rows as worker_rows

E2E_DIR = Path(__file__).resolve().parent
LEASE_SECONDS = 2.0
POLL_SECONDS = 0.5



@pytest.fixture
def process_app() -> ProcessApp:
    return ProcessApp("worker_app:app", cwd=E2E_DIR, executions_ddl=EXECUTIONS_DDL, concurrency=10,
                      lease_seconds=LEASE_SECONDS, poll_seconds=POLL_SECONDS)
