"""Start-up of ``pgqueue worker``: what the worker path imports, and how ``--processes`` starts its
children (forked from the supervisor, or started afresh when forking is unsafe).

The time it takes is measured by ``pgqueue bench --scenario startup``, not asserted here.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

import pgqueue
from tests.e2e.conftest import E2E_DIR
from tests.helpers import wait_until
from tests.plugins.processes import ProcessApp, SpawnPgqueue, WorkerProcess

Db = psycopg.Connection[TupleRow]

# What a worker never needs: the migration tooling, the command line's other commands, the bench,
# the web extra, encryption when no key is configured, and the pools of transactional tasks when there are none.
NOT_ON_THE_WORKER_PATH = (
    "sqlalchemy", "alembic", "cryptography", "psycopg_pool", "starlette", "jinja2", "prometheus_client",
    "pgqueue._bench", "pgqueue._migrate", "pgqueue._soak", "pgqueue.admin", "pgqueue.web",
    "pgqueue.cli.bench", "pgqueue.cli.jobs", "pgqueue.cli.migrate", "pgqueue.cli.dashboard", "pgqueue.cli.demo",
)


@pytest.fixture
def process_app() -> ProcessApp:
    return ProcessApp("startup_app:app", cwd=E2E_DIR, concurrency=1, lease_seconds=5.0, poll_seconds=0.5)


def results(db: Db, job_ids: list[int]) -> list[dict[str, Any]]:
    rows = db.execute("SELECT result FROM pgqueue.jobs WHERE id = ANY(%s) AND state = 'completed'",
                      [job_ids]).fetchall()
    return [row[0] for row in rows]


def enqueue_whoami(dsn: str, count: int, hold_seconds: float = 0.0) -> list[int]:
    return pgqueue.App(dsn).enqueue_many(
        None, [pgqueue.JobSpec("whoami", {"hold_seconds": hold_seconds}) for _ in range(count)])


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(f"{h}.") for h in NOT_ON_THE_WORKER_PATH)]


def start_two(spawn_pgqueue: SpawnPgqueue, dsn: str, env: dict[str, str] | None = None) -> WorkerProcess:
    return spawn_pgqueue("worker", "--app", "startup_app:app", "--processes", "2", "--concurrency", "1",
                         dsn=dsn, env=env)


def two_children_each_ran_a_job(db: Db, worker: WorkerProcess, job_ids: list[int]) -> list[dict[str, Any]]:
    """Each of two 3 s jobs held one child's only slot, so each child ran one."""
    def both() -> list[dict[str, Any]]:
        found = results(db, job_ids)
        return found if len(found) == 2 else []

    done = wait_until(both, timeout=30, message="both jobs completed")
    assert {r["ppid"] for r in done} == {worker.pid}, worker.describe()
    assert len({r["pid"] for r in done}) == 2, worker.describe()
    return done


def test_a_worker_imports_no_migration_tooling_no_other_command_and_no_crypto_without_keys(
        dsn: str, db: Db, spawn_pgqueue: SpawnPgqueue) -> None:
    worker = spawn_pgqueue("worker", "--app", "startup_app:app", dsn=dsn)
    job_ids = enqueue_whoami(dsn, 1)

    [result] = wait_until(lambda: results(db, job_ids), timeout=30, message="the job completed")

    assert "pgqueue.worker" in result["modules"]  # the list is the worker's own, taken in the handler
    assert heavy(result["modules"]) == [], worker.describe()
    assert worker.stop() == 0, worker.describe()


def test_a_worker_imports_its_own_code_before_the_app_so_that_only_database_set_up_follows_the_app_load(
        dsn: str, db: Db, spawn_pgqueue: SpawnPgqueue) -> None:
    worker = spawn_pgqueue("worker", "--app", "startup_app:app", dsn=dsn)
    job_ids = enqueue_whoami(dsn, 1)

    [result] = wait_until(lambda: results(db, job_ids), timeout=30, message="the job completed")

    before = set(result["modules_before_app"])
    assert {"psycopg", "pgqueue.worker", "pgqueue._worker.loop", "pgqueue._worker.executor"} <= before
    imported_later = [m for m in result["modules"] if m.startswith("pgqueue") and m not in before]
    assert imported_later == [], worker.describe()
    # The CLI pauses the garbage collector during its own start-up only: never for the app's code.
    assert result["gc_at_import"] is True
    assert result["gc"] is True
    assert worker.stop() == 0, worker.describe()


def test_processes_children_are_forks_of_the_supervisor_that_imported_everything_already(
        dsn: str, db: Db, spawn_pgqueue: SpawnPgqueue) -> None:
    worker = start_two(spawn_pgqueue, dsn)
    job_ids = enqueue_whoami(dsn, 2, hold_seconds=3)

    done = two_children_each_ran_a_job(db, worker, job_ids)

    started = worker.log_events("supervisor.child_started")
    assert sorted((e["slot"], e["start"]) for e in started) == [(0, "fork"), (1, "fork")], worker.describe()
    assert {e["pid"] for e in started} == {r["pid"] for r in done}
    assert all(heavy(r["modules"]) == [] for r in done), worker.describe()
    assert all(r["gc_at_import"] and r["gc"] for r in done)
    assert worker.stop() == 0, worker.describe()
    assert worker.log_events("supervisor.fork_unsafe") == []
    # Both children shut down on their own (SIGTERM forwarded), and said so.
    assert len(worker.log_events("worker.stopped")) == 2, worker.describe()


@pytest.mark.parametrize("env", ["STARTUP_APP_THREAD", "STARTUP_APP_SOCKET"], ids=["thread", "socket"])
def test_an_app_that_starts_a_thread_or_opens_a_socket_at_import_still_gets_forked_children_each_with_its_own(
        dsn: str, db: Db, spawn_pgqueue: SpawnPgqueue, env: str) -> None:
    # Forking a process with another thread can copy a lock that thread holds, locked forever; a
    # socket opened at import (a connection) would be shared by every child. The supervisor never
    # imports the app (a throwaway fork checks it loads): each child imports it after its fork.
    worker = start_two(spawn_pgqueue, dsn, env={env: "1"})
    job_ids = enqueue_whoami(dsn, 2, hold_seconds=3)

    done = two_children_each_ran_a_job(db, worker, job_ids)

    assert [e["start"] for e in worker.log_events("supervisor.child_started")] == ["fork", "fork"], worker.describe()
    assert worker.log_events("supervisor.fork_unsafe") == []
    if env == "STARTUP_APP_THREAD":
        assert all("app-import-thread" in r["threads"] for r in done)
    assert worker.stop() == 0, worker.describe()


def test_a_broken_app_fails_the_supervisor_once_before_any_child_starts(
        dsn: str, spawn_pgqueue: SpawnPgqueue) -> None:
    worker = spawn_pgqueue("worker", "--app", "startup_app:no_such_app", "--processes", "2", dsn=dsn)

    assert worker.wait(30) != 0, worker.describe()
    assert worker.log_events("supervisor.child_started") == [], worker.describe()
    assert worker.stderr().count("pgqueue: error:") == 1, worker.describe()


@pytest.mark.parametrize("processes", ["1", "2"])
def test_an_app_that_raises_at_import_is_one_line_naming_the_app_s_error_not_a_pgqueue_bug(
        dsn: str, spawn_pgqueue: SpawnPgqueue, processes: str) -> None:
    worker = spawn_pgqueue("worker", "--app", "broken_app:app", "--processes", processes, dsn=dsn)

    assert worker.wait(30) == 1, worker.describe()
    lines = [line for line in worker.stderr().splitlines() if line.startswith("pgqueue: error:")]
    assert len(lines) == 1, worker.describe()
    assert "a bug in pgqueue" not in lines[0]
    assert "RuntimeError" in lines[0], lines[0]
    assert "broken_app.py:9" in lines[0], lines[0]
    assert "missing SMTP_HOST" in lines[0], lines[0]


def test_sigterm_while_the_first_child_loads_the_app_stops_the_supervisor_at_once_and_starts_no_other(
        dsn: str, spawn_pgqueue: SpawnPgqueue, tmp_path: Any) -> None:
    marker = tmp_path / "importing"
    marker.touch()
    worker = start_two(spawn_pgqueue, dsn, env={"STARTUP_APP_SLOW": str(marker)})
    wait_until(lambda: marker.read_text().split(), timeout=30, message="the first child to import the app")

    assert worker.stop(timeout=4) == 0, worker.describe()  # well within the app's 5 s import
    assert len(marker.read_text().split()) == 1  # the second child was never forked
    assert worker.log_events("supervisor.child_started") == [], worker.describe()


def test_sigterm_while_a_single_worker_loads_the_app_exits_0_at_once(
        dsn: str, spawn_pgqueue: SpawnPgqueue, tmp_path: Any) -> None:
    # It was killed by SIGTERM's default action (exit 143, nothing said); --processes exits 0 (above).
    marker = tmp_path / "importing"
    marker.touch()
    worker = spawn_pgqueue("worker", "--app", "startup_app:app", dsn=dsn, env={"STARTUP_APP_SLOW": str(marker)})
    wait_until(lambda: marker.read_text().split(), timeout=30, message="the worker importing the app")

    assert worker.stop(timeout=4) == 0, worker.describe()  # well within the app's 5 s import


HANDSHAKE = r"""
import os, sys, time
from pgqueue._worker.supervisor import Handshake, Supervisor
marks, mode = sys.argv[1], sys.argv[2]
handshake = Handshake()
def started() -> int:
    with open(marks, "a") as out:
        out.write(f"{handshake.message}\n")
    if handshake.message is None:  # the first child: the others wait for its word
        if mode == "fail":
            return 3
        time.sleep(0.5)
        handshake.tell("postgresql://told")
    time.sleep(60)
    return 0
sys.exit(Supervisor([sys.executable, "-c", "pass"], 3, 5.0, target=started, handshake=handshake).run())
"""


def test_the_first_child_tells_the_supervisor_it_started_and_the_others_are_forked_after_with_its_message(
        tmp_path: Any) -> None:
    marks = tmp_path / "marks"
    marks.touch()
    supervisor = subprocess.Popen([sys.executable, "-c", HANDSHAKE, str(marks), "ok"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        started = wait_until(lambda: lines if len(lines := marks.read_text().split()) == 3 else None,
                             timeout=30, message="three children to start")
    finally:
        supervisor.terminate()
        supervisor.wait(30)
    assert started == ["None", "postgresql://told", "postgresql://told"]


def test_a_first_child_that_exits_without_telling_stops_the_supervisor_with_its_code_and_no_other_starts(
        tmp_path: Any) -> None:
    marks = tmp_path / "marks"
    marks.touch()
    done = subprocess.run([sys.executable, "-c", HANDSHAKE, str(marks), "fail"], capture_output=True, timeout=60,
                          check=False)

    assert done.returncode == 3, done.stderr[-2000:]
    assert marks.read_text().split() == ["None"]


SUPERVISED = r"""
import os, sys, threading, time
from pgqueue._worker.supervisor import Supervisor
marks = sys.argv[1]
if sys.argv[2] == "thread":
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
def forked() -> int:
    with open(marks, "a") as out:
        out.write("fork\n")
    time.sleep(60)
    return 0
child = [sys.executable, "-c", "import sys, time; open(sys.argv[1], 'a').write('exec\\n'); time.sleep(60)", marks]
sys.exit(Supervisor(child, 1, 5.0, target=forked).run())
"""


@pytest.mark.parametrize("hazard", ["none", "thread"])
def test_the_supervisor_forks_only_when_safe_and_starts_a_fresh_process_otherwise(tmp_path: Any, hazard: str) -> None:
    marks = tmp_path / "marks"
    marks.touch()
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISED, str(marks), hazard],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        started = wait_until(lambda: marks.read_text().split(), timeout=30, message="the child to start")
    finally:
        supervisor.terminate()
        supervisor.wait(30)
    assert started == (["fork"] if hazard == "none" else ["exec"])


def test_worker_help_loads_neither_the_driver_nor_the_app() -> None:
    code = ("import sys\nfrom pgqueue.cli import main\nsys.argv = ['pgqueue', 'worker', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint(' '.join(sorted(sys.modules)), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)

    assert "--processes" in done.stdout
    loaded = set(done.stderr.split())
    assert "pgqueue.cli.worker" in loaded
    assert not loaded & {"psycopg", "pgqueue.app", "pgqueue._loader", "pgqueue.worker"}, done.stderr[-2000:]


def test_a_worker_started_before_the_migration_waits_saying_so_then_runs_jobs_once_migrated(
        empty_dsn: str, spawn_pgqueue: SpawnPgqueue, run_cli: Any) -> None:
    """Deploys often start workers before (or while) the migration job runs: the worker must not
    crash-loop, must say what is missing, and must start working once the schema is there."""
    worker = spawn_pgqueue("worker", "--app", "startup_app:app", dsn=empty_dsn)
    wait_until(lambda: worker.log_events("database.unavailable"), timeout=60, message="the schema warning")
    warning = worker.log_events("database.unavailable")[0]
    assert warning["error_type"] == "SchemaNotReady", warning
    assert "run `pgqueue migrate`" in warning["error"], warning
    assert worker.alive(), worker.describe()

    migrated = run_cli(["migrate"], dsn=empty_dsn)
    assert migrated.returncode == 0, migrated.stderr
    [job_id] = enqueue_whoami(empty_dsn, 1)
    with psycopg.connect(empty_dsn) as db:
        wait_until(lambda: results(db, [job_id]), timeout=60, message="the job completed after the migration")
    assert worker.alive(), worker.describe()
