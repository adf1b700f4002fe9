"""A primary failover loses nothing: a real primary and a streaming standby on loopback, producers
and workers on a multi-host DSN (``target_session_attrs=read-write``); under load the primary is
stopped and the standby promoted.

Replication is synchronous (``synchronous_commit = on``, ``synchronous_standby_names = '*'``), as
docs/operations/failure-behaviour.md ("A primary failover") recommends: every enqueue whose COMMIT
returned is on the standby, so every one must complete on the new primary, once.

Runs the system PostgreSQL's programs (initdb, pg_basebackup, pg_ctl) when installed, else the
embedded package's (``tests.helpers.postgres_programs``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from pgqueue import App, _migrate
from pgqueue.errors import PgqueueError
from tests.faults.conftest import PLAIN_APP_PATH
from tests.faults.fault_app import EXECUTIONS_DDL
from tests.helpers import postgres_programs, wait_until
from tests.plugins.processes import SpawnWorker

#: How soon after the promotion the workers must complete jobs on the new primary (documented).
RESUME_BOUND_SECONDS = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user(user: str | None, argv: list[str], cwd: str) -> None:
    # initdb refuses to run as root: run the server's programs as their own user then.
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    subprocess.run(argv, check=True, cwd=cwd, capture_output=True, timeout=120)


@dataclass
class Pair:
    root: Path
    primary_port: int
    standby_port: int
    bindir: Path
    user: str | None

    def run(self, program: str, *args: str) -> None:
        _as_server_user(self.user, [str(self.bindir / program), *args], str(self.root))

    def ctl(self, node: str, *args: str) -> None:
        self.run("pg_ctl", "-D", str(self.root / node), "-w", "-t", "60", *args)

    def dsn(self, port: int) -> str:
        return f"postgresql://root@127.0.0.1:{port}/postgres?connect_timeout=3"

    @property
    def multi_host_dsn(self) -> str:
        return (f"postgresql://root@127.0.0.1:{self.primary_port},127.0.0.1:{self.standby_port}/postgres"
                "?target_session_attrs=read-write&connect_timeout=3")


@pytest.fixture
def pair() -> Iterator[Pair]:
    bindir, user = postgres_programs()
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="pgq-failover-"))
    root.chmod(0o755)
    if user is not None:
        account = pwd.getpwnam(user)
        os.chown(root, account.pw_uid, account.pw_gid)
    pair = Pair(root, _free_port(), _free_port(), bindir, user)
    started: list[str] = []
    try:
        pair.run("initdb", "-D", str(root / "primary"), "-U", "root", "--auth=trust", "-E", "UTF8")
        with (root / "primary" / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {pair.primary_port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{root}'\nwal_level = replica\nmax_wal_senders = 5\n"
                       "hot_standby = on\nsynchronous_commit = on\nsynchronous_standby_names = '*'\n"
                       "fsync = off\n")
        pair.ctl("primary", "start", "-l", str(root / "primary.log"))
        started.append("primary")
        # Until the standby connects, a synchronous commit would wait for it: migrate with it off.
        with psycopg.connect(pair.dsn(pair.primary_port), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = ''")
            conn.execute("SELECT pg_reload_conf()")
        _migrate.upgrade(pair.dsn(pair.primary_port))
        with psycopg.connect(pair.dsn(pair.primary_port), autocommit=True) as conn:
            conn.execute(EXECUTIONS_DDL.encode())
        pair.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(pair.primary_port), "-U", "root",
                 "-D", str(root / "standby"), "-R", "-X", "stream")
        # The standby becomes the primary with nobody to replicate to: no synchronous standby there.
        with (root / "standby" / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"port = {pair.standby_port}\nsynchronous_standby_names = ''\n")
        pair.ctl("standby", "start", "-l", str(root / "standby.log"))
        started.append("standby")
        with psycopg.connect(pair.dsn(pair.primary_port), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            conn.execute("SELECT pg_reload_conf()")
            wait_until(lambda: conn.execute("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'"
                                            ).fetchone() == (1,), timeout=30, message="the standby is synchronous")
        yield pair
    finally:
        for node in reversed(started):
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                pair.ctl(node, "stop", "-m", "immediate")
        shutil.rmtree(root, ignore_errors=True)


class Producer(threading.Thread):
    """Enqueues one job per transaction on the multi-host DSN; remembers the ids whose COMMIT returned."""

    def __init__(self, dsn: str) -> None:
        super().__init__(name="producer", daemon=True)
        self.app = App(dsn)
        self.confirmed: list[int] = []
        self.failures = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.confirmed.append(self.app.enqueue(None, "noop", {"n": len(self.confirmed)}))
            except (PgqueueError, psycopg.Error, OSError):
                self.failures += 1
                time.sleep(0.1)
                continue
            time.sleep(0.01)


@pytest.mark.timing
def test_a_failover_under_load_loses_no_committed_job_and_completes_each_once(
        pair: Pair, spawn_worker: SpawnWorker) -> None:
    dsn = pair.multi_host_dsn
    workers = [spawn_worker(dsn, app_path=PLAIN_APP_PATH, concurrency=4, lease_seconds=5.0, poll_seconds=0.5)
               for _ in range(2)]
    producer = Producer(dsn)
    producer.start()
    try:
        wait_until(lambda: len(producer.confirmed) >= 150, timeout=60, message="load before the failover")
        # Jobs still running when the primary stops, and an outage longer than the lease (5 s): the
        # promoted standby started long before, so a grace counted from its start time alone would
        # let the rescuer re-run these jobs while their live workers were only reconnecting.
        long_ids = [App(dsn).enqueue(None, "record", {"seconds": 3}) for _ in range(6)]
        with psycopg.connect(pair.dsn(pair.primary_port), autocommit=True) as conn:
            wait_until(lambda: conn.execute("SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) "
                                            "AND state = 'running'", [long_ids]).fetchone() == (6,), timeout=30)
        pair.ctl("primary", "stop", "-m", "fast")
        time.sleep(8)
        pair.ctl("standby", "promote")  # -w: returns once the standby accepts writes
        with psycopg.connect(pair.dsn(pair.standby_port), autocommit=True) as conn:
            row = conn.execute("SELECT now()").fetchone()
            assert row is not None
            promoted_at = row[0]
        wait_until(lambda: len(producer.confirmed) >= 400, timeout=90, message="load after the failover")
    finally:
        producer.stopping.set()
        producer.join(timeout=30)
    confirmed = [*producer.confirmed, *long_ids]
    with psycopg.connect(pair.dsn(pair.standby_port), autocommit=True) as conn:
        def all_completed() -> bool:
            row = conn.execute("SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) AND state = 'completed'",
                               [confirmed]).fetchone()
            return row is not None and row[0] == len(confirmed)

        try:
            wait_until(all_completed, timeout=90)
        except AssertionError:
            states = conn.execute("SELECT state, count(*) FROM pgqueue.jobs WHERE id = ANY(%s) GROUP BY state",
                                  [confirmed]).fetchall()
            raise AssertionError(f"{states}\n" + "\n".join(w.describe() for w in workers)) from None
        row = conn.execute("SELECT EXTRACT(epoch FROM min(at) - %s) FROM pgqueue.job_events "
                           "WHERE event = 'completed' AND at > %s", [promoted_at, promoted_at]).fetchone()
        assert row is not None
        assert row[0] is not None
        resumed_after = float(row[0])
        twice = conn.execute("SELECT job_id FROM pgqueue.job_events WHERE event = 'completed' "
                             "GROUP BY job_id HAVING count(*) > 1").fetchall()
        rescued = conn.execute("SELECT job_id FROM pgqueue.job_events WHERE event = 'rescued' AND at > %s",
                               [promoted_at]).fetchall()
        missing = conn.execute("SELECT count(*) FROM unnest(%s::bigint[]) AS c(id) "
                               "WHERE NOT EXISTS (SELECT 1 FROM pgqueue.jobs j WHERE j.id = c.id)",
                               [confirmed]).fetchone()
    assert missing == (0,), "a job whose enqueue committed is missing after the failover"
    assert twice == [], f"completed twice: {twice}"
    # The figure for docs/operations/failure-behaviour.md (pytest -rA shows it).
    assert resumed_after < RESUME_BOUND_SECONDS, (
        f"{len(confirmed)} jobs confirmed, {producer.failures} enqueues refused during the failover, "
        f"first completion {resumed_after:.2f}s after the promotion")
    assert rescued == [], f"live workers' jobs were rescued after the promotion: {rescued}"
    for worker in workers:
        assert worker.alive(), worker.describe()
        assert worker.stop(timeout=60) == 0, worker.describe()
