"""Issue 5, item 14: pgqueue behind PgBouncer in transaction pooling mode.

The tests that need PgBouncer are marked ``system_binary("pgbouncer")``: they run with
``--system-binaries=pgbouncer`` (``.ci/run`` installs the Debian package and passes it), and are
deselected otherwise. Each starts PgBouncer as a subprocess on a free 127.0.0.1 port, in front of
the test's server (``PGQUEUE_TEST_DSN`` or the embedded one), with ``pool_mode = transaction`` and
``auth_type = trust``. PgBouncer refuses to run as root, so as root it runs as an unprivileged
account (``postgres``, ``pgqueue`` or ``nobody``) from a directory under ``/tmp`` that account can
read.

- Enqueue through PgBouncer commits and rolls back with the caller's transaction.
- A worker through PgBouncer works in poll-only mode (no LISTEN session at all).
- A worker through PgBouncer with a direct ``--listen-dsn`` is woken by NOTIFY, well before its poll.
- A worker through PgBouncer with neither refuses to start with one line naming both fixes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

import pgqueue
from pgqueue import admin
from pgqueue._db.jobs import AsyncJobStore
from tests.faults.conftest import PLAIN_APP_PATH, executions
from tests.helpers import wait_until
from tests.plugins.processes import SpawnWorker, WorkerProcess, job_states, wait_for_registration
from tests.plugins.system_binaries import system_binary

REFUSAL = (
    "pgqueue: error: the worker's DSN goes through a connection pooler (PgBouncer?), where LISTEN does not work "
    "in transaction pooling: set PGQUEUE_LISTEN_DSN (--listen-dsn) to a direct PostgreSQL DSN, "
    "or PGQUEUE_POLL_ONLY=1 (--poll-only) to find jobs by polling alone"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run_as() -> pwd.struct_passwd | None:
    """The account PgBouncer runs under: None (ourselves) unless we are root, which it refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgqueue", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    pytest.fail("running as root and no postgres/pgqueue/nobody account exists to run pgbouncer as")


@dataclass
class Bouncer:
    port: int
    home: Path
    proc: subprocess.Popen[bytes]

    def dsn_for(self, direct_dsn: str) -> str:
        """``direct_dsn`` (same user and database) through this PgBouncer."""
        return psycopg.conninfo.make_conninfo(direct_dsn, host="127.0.0.1", port=str(self.port))

    def log(self) -> str:
        return (self.home / "pgbouncer.log").read_text(errors="replace")


@pytest.fixture
def bouncer(pg_server_dsn: str) -> Iterator[Bouncer]:
    binary = system_binary("pgbouncer")
    server = psycopg.conninfo.conninfo_to_dict(pg_server_dsn)
    host, port, user = server.get("host") or "127.0.0.1", server.get("port") or "5432", server.get("user")
    if user is None:
        with psycopg.connect(pg_server_dsn) as probe:
            user = probe.info.user
    account = _run_as()
    home = Path(tempfile.mkdtemp(dir="/tmp", prefix="pgq-pgbouncer-"))
    home.chmod(0o755)
    listen_port = _free_port()
    (home / "userlist.txt").write_text(f'"{user}" ""\n')
    (home / "pgbouncer.ini").write_text(f"""\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {home / "userlist.txt"}
pool_mode = transaction
; Several server connections, so consecutive transactions of one client do land on different ones.
default_pool_size = 8
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
""")
    for path in home.iterdir():
        path.chmod(0o644)
    log = (home / "pgbouncer.log").open("wb")
    proc = subprocess.Popen(
        [binary, str(home / "pgbouncer.ini")], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        user=account.pw_uid if account else None, group=account.pw_gid if account else None,
        extra_groups=[] if account else None)
    started = Bouncer(listen_port, home, proc)

    def accepting() -> bool:
        assert proc.poll() is None, f"pgbouncer exited with {proc.returncode}:\n{started.log()}"
        try:
            with psycopg.connect(started.dsn_for(pg_server_dsn), connect_timeout=2, prepare_threshold=None) as c:
                c.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    try:
        wait_until(accepting, timeout=15, interval=0.1, message="pgbouncer accepting connections")
        yield started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def _count(db: psycopg.Connection[TupleRow], query: str, params: Sequence[Any] = ()) -> int:
    row = db.execute(query.encode(), params).fetchone()
    assert row is not None
    return int(row[0])


def _in_state(db: psycopg.Connection[TupleRow], job_id: int, state: str) -> bool:
    return job_states(db).get(job_id) == state


def _executed(db: psycopg.Connection[TupleRow], job_id: int) -> bool:
    return job_id in executions(db)


def _assert_no_session_errors(worker: WorkerProcess) -> None:
    """Nothing the worker did through PgBouncer failed (a prepared statement on the wrong server
    connection, a lost session setting) and had to be retried."""
    problems = worker.log_events("database.unavailable", "listener.disconnected", "job.failed",
                                 "job.retry_scheduled")
    assert problems == [], worker.describe()
    assert "prepared statement" not in worker.stderr(), worker.describe()


@pytest.mark.system_binary("pgbouncer")
def test_enqueue_through_pgbouncer_commits_and_rolls_back_with_the_callers_transaction(
        bouncer: Bouncer, fault_dsn: str, db: psycopg.Connection[TupleRow]) -> None:
    pooled = bouncer.dsn_for(fault_dsn)
    app = pgqueue.App(pooled)
    # The caller's own connection: with PgBouncer < 1.21 (Debian 12 ships 1.18) it needs
    # prepare_threshold=None, or psycopg's statements prepared after their 5th run may be missing
    # on the server connection a later transaction lands on. The README says so.
    with psycopg.connect(pooled, prepare_threshold=None) as conn:
        committed = [app.enqueue(conn, "noop", {"n": n}) for n in range(12)]
        conn.commit()
        rolled_back = [app.enqueue(conn, "noop", {"n": n}) for n in range(12, 20)]
        conn.rollback()
        with conn.transaction():
            committed += app.enqueue_many(conn, [pgqueue.JobSpec("noop", {"n": n}) for n in range(20, 25)])
        with contextlib.suppress(RuntimeError), conn.transaction():
            rolled_back.append(app.enqueue(conn, "noop", {"n": 99}))
            raise RuntimeError("the caller's transaction fails after the enqueue")
    # pgqueue's own connection (no conn given): commits at once.
    committed.append(app.enqueue(None, "noop", {"n": 100}))

    async def enqueue_async() -> list[int]:
        async with await psycopg.AsyncConnection.connect(pooled, prepare_threshold=None) as aconn:
            ids = [await app.enqueue_async(aconn, "noop", {"n": n}) for n in range(200, 207)]
            await aconn.commit()
            await app.enqueue_async(aconn, "noop", {"n": 300})
            await aconn.rollback()
            return ids

    committed += asyncio.run(enqueue_async())
    assert sorted(job_states(db)) == sorted(committed)
    assert set(job_states(db).values()) == {"available"}
    assert not set(rolled_back) & set(job_states(db))
    assert _count(db, "SELECT count(*) FROM pgqueue.job_events WHERE event = 'enqueued'") == len(committed)


@pytest.mark.system_binary("pgbouncer")
@pytest.mark.timing
def test_worker_through_pgbouncer_in_poll_only_mode_completes_jobs(
        bouncer: Bouncer, fault_dsn: str, db: psycopg.Connection[TupleRow], spawn_worker: SpawnWorker) -> None:
    pooled = bouncer.dsn_for(fault_dsn)
    worker = spawn_worker(pooled, record_dsn=fault_dsn, app_path=PLAIN_APP_PATH, poll_seconds=0.3,
                          env={"PGQUEUE_POLL_ONLY": "1"})
    wait_for_registration(db, worker)
    app = pgqueue.App(pooled)
    with psycopg.connect(pooled, prepare_threshold=None) as conn:
        ids = app.enqueue_many(conn, [pgqueue.JobSpec("record") for _ in range(30)])
    started = time.monotonic()
    wait_until(lambda: set(job_states(db).values()) == {"completed"}, timeout=30,
               message=f"30 jobs completed by a poll-only worker behind PgBouncer\n{worker.describe()}")
    elapsed = time.monotonic() - started
    assert executions(db) == dict.fromkeys(ids, 1)
    # Later jobs, one at a time: each found by a poll, within the poll interval plus slack.
    for n in range(3):
        enqueued = time.monotonic()
        job_id = app.enqueue(None, "record", {"n": n})
        wait_until(functools.partial(_in_state, db, job_id, "completed"), timeout=10)
        assert time.monotonic() - enqueued < 0.3 + 2.0, worker.describe()
    assert _count(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgqueue-listen' "
                      "AND datname = current_database()") == 0
    assert worker.log_events("listener.disabled"), worker.describe()
    _assert_no_session_errors(worker)
    assert worker.stop() == 0, worker.describe()
    print(f"poll-only behind PgBouncer: 30 jobs in {elapsed:.2f}s")  # noqa: T201


@pytest.mark.system_binary("pgbouncer")
@pytest.mark.timing
def test_worker_through_pgbouncer_with_a_direct_listen_dsn_wakes_on_notify(
        bouncer: Bouncer, fault_dsn: str, db: psycopg.Connection[TupleRow], spawn_worker: SpawnWorker) -> None:
    pooled = bouncer.dsn_for(fault_dsn)
    # A poll far longer than the test: only NOTIFY can start these jobs in time.
    worker = spawn_worker(pooled, record_dsn=fault_dsn, app_path=PLAIN_APP_PATH, poll_seconds=60,
                          args=["--listen-dsn", fault_dsn])
    wait_for_registration(db, worker)
    wait_until(lambda: _count(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                  "'pgqueue-listen' AND datname = current_database()") == 1,
               timeout=15, message=f"the worker's direct LISTEN session\n{worker.describe()}")
    app = pgqueue.App(pooled)
    latencies = []
    for n in range(5):
        # Let the worker go back to waiting (its claim after the previous wake-up found nothing).
        time.sleep(0.3)
        with psycopg.connect(pooled, prepare_threshold=None) as conn:
            job_id = app.enqueue(conn, "record", {"n": n})
            enqueued = time.monotonic()
        wait_until(functools.partial(_executed, db, job_id), timeout=10, interval=0.01,
                   message=f"job {job_id} started by NOTIFY\n{worker.describe()}")
        latencies.append(time.monotonic() - enqueued)
    assert max(latencies) < 2.0, (latencies, worker.describe())
    wait_until(lambda: set(job_states(db).values()) == {"completed"}, timeout=10)
    _assert_no_session_errors(worker)
    assert worker.stop() == 0, worker.describe()
    print(f"NOTIFY wake-up through a direct listen DSN: {[round(x * 1000) for x in latencies]} ms")  # noqa: T201


@pytest.mark.system_binary("pgbouncer")
def test_worker_through_pgbouncer_without_listen_dsn_or_poll_only_refuses_with_one_line(
        bouncer: Bouncer, fault_dsn: str, db: psycopg.Connection[TupleRow], spawn_worker: SpawnWorker) -> None:
    worker = spawn_worker(bouncer.dsn_for(fault_dsn), record_dsn=fault_dsn, app_path=PLAIN_APP_PATH,
                          poll_seconds=1)
    assert worker.wait(timeout=30) == 1, worker.describe()
    errors = [line for line in worker.stderr().splitlines() if line.startswith("pgqueue: error:")]
    assert errors == [REFUSAL], worker.describe()
    # It refused before registering or claiming anything.
    assert _count(db, "SELECT count(*) FROM pgqueue.workers") == 0


def test_a_direct_worker_is_not_mistaken_for_one_behind_a_pooler(
        fault_dsn: str, db: psycopg.Connection[TupleRow], spawn_worker: SpawnWorker) -> None:
    worker = spawn_worker(fault_dsn, record_dsn=fault_dsn, app_path=PLAIN_APP_PATH, poll_seconds=60)
    wait_for_registration(db, worker)
    job_id = pgqueue.App(fault_dsn).enqueue(None, "record")
    wait_until(lambda: executions(db).get(job_id), timeout=10, message=worker.describe())
    assert worker.stop() == 0, worker.describe()


@pytest.mark.system_binary("pgbouncer")
@pytest.mark.timing
def test_cancelling_a_running_job_reaches_a_poll_only_worker_behind_pgbouncer_within_a_second(
        bouncer: Bouncer, fault_dsn: str, db: psycopg.Connection[TupleRow], spawn_worker: SpawnWorker) -> None:
    # No LISTEN through transaction pooling: the worker's heartbeat finds the cancellation.
    from tests.e2e.control_app import CONTROL_DDL

    db.execute(CONTROL_DDL.encode())
    pooled = bouncer.dsn_for(fault_dsn)
    worker = spawn_worker(pooled, app_path="tests.e2e.control_app:app", poll_seconds=0.3,
                          env={"PGQUEUE_POLL_ONLY": "1"})
    wait_for_registration(db, worker)
    job_id = pgqueue.App(fault_dsn).enqueue(None, "wait-sync", {})
    wait_until(lambda: _count(db, "SELECT count(*) FROM test_executions WHERE job_id = %s", [job_id]) == 1,
               timeout=30, message=f"the job to start\n{worker.describe()}")

    with psycopg.connect(pooled, prepare_threshold=None) as conn:
        admin.cancel_job(conn, job_id, actor="ops")

    wait_until(lambda: _count(db, "SELECT count(*) FROM test_cancels WHERE job_id = %s", [job_id]) == 1,
               timeout=10, message=f"the handler to learn of the cancellation\n{worker.describe()}")
    lag = db.execute("SELECT EXTRACT(EPOCH FROM c.seen_at - e.at)::float8 FROM test_cancels AS c "
                     "JOIN pgqueue.job_events AS e ON e.job_id = c.job_id AND e.event = 'cancelled'").fetchone()
    assert lag is not None
    assert lag[0] < 1.0, lag
    assert _in_state(db, job_id, "cancelled")
    _assert_no_session_errors(worker)
    assert worker.stop() == 0, worker.describe()


@pytest.mark.system_binary("pgbouncer")
def test_limited_claims_hold_their_limits_through_pgbouncer(
        bouncer: Bouncer, fault_dsn: str, db: psycopg.Connection[TupleRow]) -> None:
    # A limited claim sends its lock and its claim as one pipeline whose sync ends the transaction:
    # through a transaction-mode pooler both must still reach one server session, in one transaction.
    app = pgqueue.App(fault_dsn)
    app.enqueue_many(db, [pgqueue.JobSpec("record", queue="lim") for _ in range(6)]
                     + [pgqueue.JobSpec("slow-task", queue="other") for _ in range(6)])
    admin.set_queue_limits(db, "lim", concurrency=2)
    db.execute("INSERT INTO pgqueue.task_limits (task, concurrency) VALUES ('slow-task', 3)")
    pooled = bouncer.dsn_for(fault_dsn)

    async def claim_twice() -> tuple[list[int], list[int]]:
        # As the worker's claim session behind a pooler: autocommit, no server-side prepared statements.
        async with await psycopg.AsyncConnection.connect(pooled, autocommit=True, prepare_threshold=None) as conn:
            store = AsyncJobStore(conn)
            by_queue = [len((await store.claim_limited_queue_jobs("lim", 5, "w-pooled"))[0]) for _ in range(2)]
            by_task = [len((await store.claim_limited_task_jobs("slow-task", None, 5, "w-pooled"))[0])
                       for _ in range(2)]
            return by_queue, by_task

    by_queue, by_task = asyncio.run(claim_twice())

    assert by_queue == [2, 0]
    assert by_task == [3, 0]
    # This database's: pg_locks is the whole server's, where other tests take advisory locks too.
    assert _count(db, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                      "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())") == 0
