"""Database faults (issue 5, items 5-10): real ``pgqueue worker`` processes against a real PostgreSQL
that goes down, drops the worker's LISTEN session, turns read-only, kills idle sessions, or caps
the worker role's connections.

Faults that would disturb other tests (stopping the server, ``ALTER SYSTEM``) run on a private
server (``private_server``); the others on the shared server, in the test's own database and with a
role of its own (``worker_role``).
"""

from __future__ import annotations

import itertools
import signal
import statistics
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow

import pgqueue
from pgqueue._db.workers import WorkerStore
from pgqueue.errors import DatabaseUnavailable
from tests.faults.conftest import APP_PATH, PLAIN_APP_PATH, WorkerRole, executions, role_backends
from tests.helpers import wait_until
from tests.plugins.processes import (
    PrivateServer,
    RunCli,
    SpawnWorker,
    WorkerProcess,
    completion_events,
    job_states,
    parse_timestamp,
    wait_for_registration,
)

pytestmark = pytest.mark.slow

PASSWORD = "s3cret-do-not-print"
# The worker's retry delays are capped at 10 s (claim, listener) and less for its other duties.
BACKOFF_CAP_SECONDS = 10.0
WORKER_SESSION_NAMES = ("pgqueue-claim", "pgqueue-ack", "pgqueue-listen", "pgqueue-heartbeat", "pgqueue-maintenance")


def one_error_line(result: Any) -> str:
    """The CLI's failure contract: non-zero exit, exactly one stderr line ``pgqueue: error: ...``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, result
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pgqueue: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return str(lines[0])


def latency(db: psycopg.Connection[TupleRow], job_id: int) -> float | None:
    """Seconds from enqueue to claim, both on the database clock (None while not started)."""
    row = db.execute("SELECT extract(epoch FROM started_at - enqueued_at) FROM pgqueue.jobs WHERE id = %s",
                     [job_id]).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def wait_started(db: psycopg.Connection[TupleRow], job_id: int, timeout: float) -> float:
    """Wait until the job is claimed; return its enqueue-to-start latency."""
    wait_until(lambda: latency(db, job_id) is not None, timeout=timeout, message=f"job {job_id} started")
    value = latency(db, job_id)
    assert value is not None
    return value


def wait_all_completed(db: psycopg.Connection[TupleRow], ids: list[int], timeout: float) -> None:
    def unfinished() -> list[tuple[int, str]]:
        states = job_states(db)
        return [(i, states.get(i, "missing")) for i in ids if states.get(i) != "completed"]

    wait_until(lambda: not unfinished(), timeout=timeout, message="every job completed")


def assert_ran_exactly_once(db: psycopg.Connection[TupleRow], ids: list[int]) -> None:
    """Completed, one completion in the audit trail, one execution, first attempt, nothing retried."""
    states = job_states(db)
    assert {states.get(i) for i in ids} == {"completed"}
    assert completion_events(db) == dict.fromkeys(ids, 1)
    assert executions(db) == dict.fromkeys(ids, 1)
    rows = db.execute("SELECT id, attempt FROM pgqueue.jobs WHERE attempt <> 1").fetchall()
    assert rows == [], f"jobs that needed more than one attempt: {rows}"
    retried = db.execute("SELECT job_id, event, detail FROM pgqueue.job_events "
                         "WHERE event NOT IN ('enqueued', 'claimed', 'completed')").fetchall()
    assert retried == [], f"unexpected audit events: {retried}"


def listen_backends(db: psycopg.Connection[TupleRow]) -> list[int]:
    """Pids of the 'pgqueue-listen' sessions in this test's database."""
    rows = db.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'pgqueue-listen' "
                      "AND datname = current_database()").fetchall()
    return [int(r[0]) for r in rows]


def terminate_listeners(db: psycopg.Connection[TupleRow]) -> list[int]:
    # Pids first: in one WHERE clause the planner may call pg_terminate_backend before the filters.
    pids = listen_backends(db)
    for pid in pids:
        db.execute("SELECT pg_terminate_backend(%s)", [pid])
    return pids


def retry_lines_by_source(worker: WorkerProcess, event: str) -> dict[str, list[dict[str, Any]]]:
    """The worker's ``event`` log lines grouped by what emitted them (a thread or a connection role)."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in worker.log_events(event):
        grouped[str(entry.get("thread") or entry.get("role") or entry.get("logger") or event)].append(entry)
    return grouped


def assert_one_line_per_attempt_with_capped_backoff(lines: list[dict[str, Any]], source: str) -> None:
    """Consecutive retry lines of one source are spaced by the delay the previous line announced
    (so one line per attempt, never a flood), and the delays grow to a cap."""
    delays = [float(entry["retry_in_s"]) for entry in lines]
    assert max(delays) <= BACKOFF_CAP_SECONDS, (source, delays)
    assert delays == sorted(delays), f"{source}: the backoff must not shrink while the fault lasts: {delays}"
    for previous, entry in itertools.pairwise(lines):
        gap = parse_timestamp(entry) - parse_timestamp(previous)
        # 0.8: timestamps are taken around the sleep, not exactly at its ends.
        assert gap >= 0.8 * float(previous["retry_in_s"]), (source, gap, previous, entry)


# --- 5. enqueue while the database is down ---


def test_enqueue_while_the_database_is_down_is_a_typed_error_and_writes_nothing(
        private_server: PrivateServer, run_cli: RunCli) -> None:
    # A password in the DSN (the embedded server trusts local connections and ignores it) must never
    # be echoed back in an error.
    dsn = private_server.dsn.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")
    assert PASSWORD in dsn
    app = pgqueue.App(dsn)
    # An application transaction that already enqueued a job when the server goes away.
    in_flight = psycopg.connect(dsn)
    try:
        app.enqueue(in_flight, "noop", {"n": 1})
        private_server.stop()

        with pytest.raises(DatabaseUnavailable) as on_app_conn:
            app.enqueue(in_flight, "noop", {"n": 2})
        with pytest.raises(DatabaseUnavailable) as own_conn:
            app.enqueue(None, "noop", {"n": 3})
        with pytest.raises(DatabaseUnavailable) as bulk:
            app.enqueue_many(None, [pgqueue.JobSpec("noop", {"n": 4}), pgqueue.JobSpec("noop", {"n": 5})])
    finally:
        in_flight.close()
    for error in (on_app_conn.value, own_conn.value, bulk.value):
        assert PASSWORD not in str(error), error
        assert str(error).startswith("database unavailable"), error

    started = time.monotonic()
    line = one_error_line(run_cli(["enqueue", "noop", "--args", '{"n": 6}', "--dsn", dsn]))
    assert PASSWORD not in line
    assert "cannot connect" in line or "unavailable" in line, line
    assert time.monotonic() - started < 60  # refused at once; never hangs on a dead server
    one_error_line(run_cli(["jobs", "list", "--dsn", dsn]))

    private_server.start()
    with private_server.admin() as admin:
        counts = admin.execute("SELECT (SELECT count(*) FROM pgqueue.jobs), "
                               "(SELECT count(*) FROM pgqueue.job_events)").fetchone()
    assert counts == (0, 0), "nothing may be half-written by an enqueue that failed"
    # And the server works again for the same App and CLI.
    assert app.enqueue(None, "noop", {"n": 7}) > 0
    printed = run_cli(["enqueue", "noop", "--dsn", dsn])
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip().isdigit()


# --- 6. the LISTEN connection is terminated ---


@pytest.mark.timing
def test_a_terminated_listen_connection_is_re_established_and_wakeups_stay_fast(
        fault_dsn: str, db: psycopg.Connection[TupleRow], spawn_worker: SpawnWorker) -> None:
    # A long poll interval: a job that starts in well under a second was woken by NOTIFY, not by a poll.
    poll = 30.0
    worker = spawn_worker(fault_dsn, poll_seconds=poll)
    wait_for_registration(db, worker)
    first = wait_until(lambda: listen_backends(db), timeout=30, message="the worker is listening")
    app = pgqueue.App(fault_dsn)

    assert terminate_listeners(db) == first
    during = app.enqueue(None, "record")
    # The listener reconnects with a short backoff and then wakes the claim loop, because anything
    # enqueued meanwhile was never announced to it: so this job starts long before the next poll.
    during_latency = wait_started(db, during, timeout=poll + 10)
    assert during_latency < poll / 3

    again = wait_until(lambda: [pid for pid in listen_backends(db) if pid not in first], timeout=10,
                       message="a new LISTEN session")
    assert len(again) == 1, again
    assert worker.log_events("listener.disconnected"), worker.describe()

    latencies = []
    for _ in range(5):
        latencies.append(wait_started(db, app.enqueue(None, "record"), timeout=poll + 10))
    print(f"\nlatency: job during the reconnect {during_latency:.3f}s; after: {[round(v, 3) for v in latencies]}")  # noqa: T201
    assert statistics.median(latencies) < 1.0, latencies
    assert max(latencies) < poll / 3, latencies
    assert worker.alive(), worker.describe()
    assert worker.stop() == 0, worker.describe()


@pytest.mark.timing
def test_jobs_start_within_the_poll_interval_while_listen_cannot_reconnect(
        worker_role: WorkerRole, db: psycopg.Connection[TupleRow], spawn_worker: SpawnWorker,
        pg_server_dsn: str, fault_dsn: str) -> None:
    poll = 2.0
    worker = spawn_worker(worker_role.dsn, poll_seconds=poll, record_dsn=fault_dsn)
    wait_for_registration(db, worker)
    wait_until(lambda: listen_backends(db), timeout=30, message="the worker is listening")
    app = pgqueue.App(fault_dsn)
    # One job first: the ack session opens with the first outcome to write.
    warm_up = app.enqueue(None, "record")
    wait_until(lambda: job_states(db).get(warm_up) == "completed", timeout=30, message="the warm-up job")
    wait_until(lambda: len(role_backends(db, worker_role.name)) == 5, timeout=30,
               message="the worker's five sessions")
    role = sql.Identifier(worker_role.name)
    # Its current sessions stay; a new one is refused: the listener cannot come back for now.
    db.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT 4").format(role))
    terminate_listeners(db)
    wait_until(lambda: len(worker.log_events("listener.disconnected")) >= 2, timeout=30,
               message="the listener failed to reconnect")
    latencies = []
    for _ in range(3):
        latencies.append(wait_started(db, app.enqueue(None, "record"), timeout=poll + 15))
    print(f"\npoll-only latencies (poll {poll}s): {[round(v, 3) for v in latencies]}")  # noqa: T201
    assert listen_backends(db) == [], "the listener was refused all along"
    # Polling alone: each job within one poll interval, plus slack for a loaded machine.
    assert max(latencies) < poll + 2.0, latencies

    db.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT -1").format(role))
    wait_until(lambda: listen_backends(db), timeout=BACKOFF_CAP_SECONDS + 15, message="LISTEN re-established")
    wait_until(lambda: worker.log_events("listener.reconnected"), timeout=10, message="the reconnect is logged")
    for source, lines in retry_lines_by_source(worker, "listener.disconnected").items():
        assert_one_line_per_attempt_with_capped_backoff(lines, source)
    assert worker.alive(), worker.describe()
    assert worker.stop() == 0, worker.describe()


# --- 7. the database is unreachable when the worker starts ---


def test_a_worker_started_while_the_database_is_down_retries_calmly_and_starts_when_it_appears(
        private_server: PrivateServer, spawn_worker: SpawnWorker, run_cli: RunCli) -> None:
    private_server.stop()
    worker = spawn_worker(private_server.dsn, poll_seconds=1.0)

    def retrying_for() -> float:
        lines = worker.log_events("database.unavailable")
        assert worker.alive(), worker.describe()
        return parse_timestamp(lines[-1]) - parse_timestamp(lines[0]) if lines else 0.0

    window = 8.0
    wait_until(lambda: retrying_for() >= window, timeout=60, message=f"{window}s of retries")
    unavailable = retry_lines_by_source(worker, "database.unavailable")
    disconnected = retry_lines_by_source(worker, "listener.disconnected")
    for source, lines in [*unavailable.items(), *disconnected.items()]:
        assert_one_line_per_attempt_with_capped_backoff(lines, source)
    total = sum(len(lines) for lines in unavailable.values())
    print(f"\n{total} database.unavailable lines over {retrying_for():.1f}s: "  # noqa: T201
          f"{ {source: [e['retry_in_s'] for e in lines] for source, lines in unavailable.items()} }")
    # Bounded: a handful per duty, not one per poll tick or per job slot.
    assert total <= 3 * window, total

    health = run_cli(["health", "--dsn", private_server.dsn])
    assert health.returncode != 0, health
    assert "FAIL  database" in health.stdout, health.stdout

    private_server.start()
    up_at = time.monotonic()
    job_id = pgqueue.App(private_server.dsn).enqueue(None, "record")
    with private_server.admin() as db:
        wait_until(lambda: job_states(db).get(job_id) == "completed", timeout=60,
                   message="the job ran once the database appeared")
        print(f"job completed {time.monotonic() - up_at:.2f}s after the database came up")  # noqa: T201
        wait_for_registration(db, worker)
        assert executions(db) == {job_id: 1}
    assert worker.log_events("database.reconnected"), worker.describe()
    assert worker.stop() == 0, worker.describe()


def test_sigterm_while_the_database_is_down_gives_the_grace_then_exits_0_within_grace_plus_12s(
        private_server: PrivateServer, spawn_worker: SpawnWorker) -> None:
    grace = 4.0
    # A 60 s lease: the jobs must still be `running` (the worker's) when the database is back.
    worker = spawn_worker(private_server.dsn, concurrency=2, lease_seconds=60.0, grace_seconds=grace)
    app = pgqueue.App(private_server.dsn)
    with private_server.admin() as db:
        wait_for_registration(db, worker)
        short = app.enqueue(None, "record", {"seconds": 3.0})  # ends within the grace, database down
        long = app.enqueue(None, "record", {"seconds": 120.0})  # outlives it: to release, and cannot
        wait_until(lambda: executions(db).keys() >= {short, long}, timeout=30, message="both jobs started")
    private_server.stop()
    signalled_at = time.monotonic()
    worker.send(signal.SIGTERM)

    assert worker.wait(timeout=grace + 12 + 8) == 0, worker.describe()
    stopped_in = time.monotonic() - signalled_at
    print(f"\nstopped {stopped_in:.1f}s after SIGTERM (grace {grace:g}s)")  # noqa: T201
    assert stopped_in >= grace
    assert worker.log_events("worker.grace_expired"), worker.describe()
    assert worker.log_events("worker.acks_unwritten"), worker.describe()
    # Slow to stop, but its event loop was free all along: the shutdown watchdog left it alone.
    assert worker.log_events("worker.loop_blocked") == [], worker.describe()
    private_server.start()
    with private_server.admin() as db:
        # Nothing was written: both come back with the lease and run again (at-least-once).
        assert {job_id: job_states(db)[job_id] for job_id in (short, long)} == {short: "running", long: "running"}


# --- 8. the database turns read-only ---


def set_read_only(server: PrivateServer, on: bool) -> None:
    # ALTER SYSTEM + reload: every session, including the worker's open ones, takes the new default
    # at its next transaction, as when a primary is fenced read-only during a failover.
    with server.admin() as admin:
        if on:
            admin.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        else:
            admin.execute("ALTER SYSTEM RESET default_transaction_read_only")
        admin.execute("SELECT pg_reload_conf()")

    def applied() -> bool:
        with server.admin() as probe:
            row = probe.execute("SHOW default_transaction_read_only").fetchone()
        return row is not None and row[0] == ("on" if on else "off")

    wait_until(applied, timeout=10, message=f"read-only {on} applied")


def test_a_read_only_database_pauses_workers_without_losing_or_stranding_jobs_and_work_resumes(
        private_server: PrivateServer, spawn_worker: SpawnWorker, run_cli: RunCli) -> None:
    # The lease (30 s, the default) outlasts the read-only spell, so no job is rescued and re-run:
    # each must run exactly once, its outcome written when the database is writable again.
    worker = spawn_worker(private_server.dsn, concurrency=2, lease_seconds=30.0, poll_seconds=1.0)
    app = pgqueue.App(private_server.dsn)
    with private_server.admin() as db:
        wait_for_registration(db, worker)
        ids = app.enqueue_many(None, [pgqueue.JobSpec("record", {"seconds": 0.3}) for _ in range(30)])
        wait_until(lambda: sum(s == "completed" for s in job_states(db).values()) >= 4, timeout=30,
                   message="some jobs completed")

        set_read_only(private_server, True)
        # Enqueueing fails too, typed and in one CLI line.
        with pytest.raises(DatabaseUnavailable, match="read-only"):
            app.enqueue(None, "record")
        one_error_line(run_cli(["enqueue", "record", "--dsn", private_server.dsn]))
        health = run_cli(["health", "--dsn", private_server.dsn])
        assert health.returncode != 0, health
        assert "read-only" in health.stdout, health.stdout

        def backing_off_for() -> float:
            assert worker.alive(), worker.describe()
            lines = worker.log_events("database.unavailable")
            return parse_timestamp(lines[-1]) - parse_timestamp(lines[0]) if lines else 0.0

        # Keep it read-only until the worker has backed off for a while: its claim loop fails
        # (nothing can be claimed), or pauses behind outcomes it cannot write.
        wait_until(lambda: backing_off_for() >= 6, timeout=60, message="the worker backs off")
        states_while_read_only = job_states(db)
        claimed_while_read_only = sum(executions(db).values())
        set_read_only(private_server, False)

        wait_all_completed(db, ids, timeout=60)
        assert "running" not in job_states(db).values()
        assert_ran_exactly_once(db, ids)
        counts = Counter(states_while_read_only.values())
        retries = retry_lines_by_source(worker, "database.unavailable")
        print(f"\nwhile read-only: {dict(counts)}, {claimed_while_read_only} executions; retries "  # noqa: T201
              f"{ {source: [e['retry_in_s'] for e in lines] for source, lines in retries.items()} }")
        assert counts["available"] > 0, "the test must cover jobs left to claim while read-only"
        # Nothing was claimed: a running job may finish, but no new one starts.
        assert claimed_while_read_only <= len(ids) - counts["available"]
        for source, lines in retries.items():
            assert "read-only" in lines[0]["error"], lines[0]
            assert_one_line_per_attempt_with_capped_backoff(lines, source)
        assert worker.log_events("database.reconnected"), worker.describe()
        # Working normally again.
        job_id = app.enqueue(None, "record")
        wait_until(lambda: job_states(db).get(job_id) == "completed", timeout=30, message="a job after recovery")
    assert worker.alive(), worker.describe()
    assert worker.stop() == 0, worker.describe()


# --- 9. aggressive server timeouts on the worker's role ---


class BackendSampler(threading.Thread):
    """Watches a role's sessions every 20 ms on its own connection: ``peak`` is the most seen at
    once, ``sessions`` every (pid, application_name) seen."""

    def __init__(self, dsn: str, role: str) -> None:
        super().__init__(name="backend-sampler", daemon=True)
        self.dsn = dsn
        self.role = role
        self.peak = 0
        self.samples = 0
        self.sessions: set[tuple[int, str]] = set()
        self.stopping = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stopping.is_set():
                backends = role_backends(conn, self.role)
                self.peak = max(self.peak, len(backends))
                self.sessions.update(backends)
                self.samples += 1
                self.stopping.wait(0.02)




def test_a_worker_whose_sessions_are_killed_when_idle_still_runs_every_job_once(
        worker_role: WorkerRole, db: psycopg.Connection[TupleRow], spawn_worker: SpawnWorker,
        fault_dsn: str) -> None:
    role = sql.Identifier(worker_role.name)
    for setting, value in [("statement_timeout", "2s"), ("idle_in_transaction_session_timeout", "1s"),
                           ("idle_session_timeout", "1s")]:
        db.execute(sql.SQL("ALTER ROLE {} SET {} = {}").format(role, sql.Identifier(setting), sql.Literal(value)))
    sampler = BackendSampler(fault_dsn, worker_role.name)
    sampler.start()
    try:
        worker = spawn_worker(worker_role.dsn, concurrency=4, lease_seconds=10.0, poll_seconds=2.0,
                              record_dsn=fault_dsn)
        wait_for_registration(db, worker)
        app = pgqueue.App(fault_dsn)
        ids: list[int] = []
        # ~15 s of bursts separated by idle gaps longer than idle_session_timeout: the worker's idle
        # sessions (claim, ack, heartbeat, the transactional pool) are ended between bursts.
        for burst in range(7):
            for n in range(4):
                ids.append(app.enqueue(None, "tx-record" if n % 2 else "record", {"burst": burst}))
            time.sleep(2.2)  # the workload's idle gap (not a wait for a result): > idle_session_timeout
        wait_all_completed(db, ids, timeout=60)
    finally:
        sampler.stopping.set()
        sampler.join(timeout=10)
    by_name = Counter(name for _, name in sampler.sessions)
    print(f"\n{len(ids)} jobs; sessions of the worker role seen: {dict(by_name)}; "  # noqa: T201
          f"database.unavailable lines: {len(worker.log_events('database.unavailable'))}")
    # The fault really happened: idle sessions were ended and replaced (a worker holds five)...
    assert len(sampler.sessions) > 10, sampler.sessions
    # ...except the listener, which probes within idle_session_timeout: one session all along.
    assert by_name["pgqueue-listen"] == 1, by_name
    assert not worker.log_events("listener.disconnected"), worker.describe()
    # A session found dead on first use is replaced at once and silently: the database was there.
    assert not worker.log_events("database.unavailable"), worker.describe()
    assert_ran_exactly_once(db, ids)
    assert worker.alive(), worker.describe()
    assert "Traceback" not in worker.stderr(), worker.describe()
    assert not worker.log_events("job.retry_scheduled", "job.failed", "job.lease_lost"), worker.describe()
    assert worker.stop() == 0, worker.describe()


# --- 10. a role connection limit below the concurrency ---


def set_connection_limit(db: psycopg.Connection[TupleRow], role: WorkerRole, limit: int) -> None:
    db.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(sql.Identifier(role.name), sql.Literal(limit)))


def test_a_worker_with_high_concurrency_works_inside_a_role_connection_limit_of_five(
        worker_role: WorkerRole, db: psycopg.Connection[TupleRow], spawn_worker: SpawnWorker,
        fault_dsn: str) -> None:
    # Plain tasks only: a worker process holds five sessions whatever its concurrency.
    set_connection_limit(db, worker_role, 5)
    sampler = BackendSampler(fault_dsn, worker_role.name)
    sampler.start()
    try:
        worker = spawn_worker(worker_role.dsn, concurrency=20, record_dsn=fault_dsn, app_path=PLAIN_APP_PATH)
        wait_for_registration(db, worker)
        app = pgqueue.App(fault_dsn)
        ids = app.enqueue_many(None, [pgqueue.JobSpec("record", {"seconds": 0.2}) for _ in range(100)])
        wait_all_completed(db, ids, timeout=90)
    finally:
        sampler.stopping.set()
        sampler.join(timeout=10)
    print(f"\npeak sessions of the worker role: {sampler.peak} ({sampler.samples} samples)")  # noqa: T201
    assert_ran_exactly_once(db, ids)
    assert sampler.peak <= 5
    # The five are the documented ones (the start-up check's session closes before they open).
    names = {name for _, name in sampler.sessions}
    assert names - {"pgqueue-worker-check"} == set(WORKER_SESSION_NAMES), names
    assert "too many connections" not in worker.stderr(), worker.describe()
    assert worker.alive(), worker.describe()
    assert worker.stop() == 0, worker.describe()


def test_transactional_tasks_share_what_a_connection_limit_leaves_after_the_worker_sessions(
        worker_role: WorkerRole, db: psycopg.Connection[TupleRow], spawn_worker: SpawnWorker,
        fault_dsn: str) -> None:
    # Six: the worker's five sessions and one pooled connection that every transactional job waits for.
    set_connection_limit(db, worker_role, 6)
    sampler = BackendSampler(fault_dsn, worker_role.name)
    sampler.start()
    try:
        worker = spawn_worker(worker_role.dsn, concurrency=20, record_dsn=fault_dsn)
        wait_for_registration(db, worker)
        app = pgqueue.App(fault_dsn)
        ids = app.enqueue_many(None, [pgqueue.JobSpec("tx-record" if n % 2 else "record", {"seconds": 0.05})
                                      for n in range(60)])
        wait_all_completed(db, ids, timeout=90)
    finally:
        sampler.stopping.set()
        sampler.join(timeout=10)
    print(f"\npeak sessions of the worker role: {sampler.peak}")  # noqa: T201
    assert_ran_exactly_once(db, ids)
    assert sampler.peak <= 6
    assert "too many connections" not in worker.stderr(), worker.describe()
    assert worker.stop() == 0, worker.describe()


@pytest.mark.parametrize(("limit", "app_path", "needed"), [(4, PLAIN_APP_PATH, 5), (5, APP_PATH, 6)])
def test_a_worker_refuses_to_start_with_one_line_when_the_connection_limit_is_too_low(
        worker_role: WorkerRole, db: psycopg.Connection[TupleRow], run_cli: RunCli,
        limit: int, app_path: str, needed: int) -> None:
    set_connection_limit(db, worker_role, limit)
    started = time.monotonic()
    result = run_cli(["worker", "--app", app_path, "--concurrency", "20", "--dsn", worker_role.dsn])
    line = one_error_line(result)
    assert f"CONNECTION LIMIT {limit}" in line, line
    assert f"needs {needed} connections" in line, line
    assert worker_role.name in line, line
    assert time.monotonic() - started < 60
    assert db.execute("SELECT count(*) FROM pgqueue.workers").fetchone() == (0,), "it never registered"


def test_a_worker_that_cannot_write_outcomes_stops_claiming_until_it_can(
        worker_role: WorkerRole, db: psycopg.Connection[TupleRow], spawn_worker: SpawnWorker,
        fault_dsn: str) -> None:
    concurrency = 4
    worker = spawn_worker(worker_role.dsn, concurrency=concurrency, record_dsn=fault_dsn, app_path=PLAIN_APP_PATH)
    wait_for_registration(db, worker)
    # The ack session opens with the first outcome: freeze the role at the sessions it holds now
    # (claim, listen, heartbeat, maintenance), so claims work and outcomes cannot be written.
    wait_until(lambda: len(role_backends(db, worker_role.name)) == 4, timeout=30, message="four sessions")
    set_connection_limit(db, worker_role, 4)
    app = pgqueue.App(fault_dsn)
    # Jobs of 1 s: slots free up long after the first refused ack session has been noticed, so only
    # the slots freed before that (one batch) can be refilled.
    ids = app.enqueue_many(None, [pgqueue.JobSpec("record", {"seconds": 1.0}) for _ in range(20)])

    def ack_failures() -> int:
        assert worker.alive(), worker.describe()
        return sum(1 for e in worker.log_events("database.unavailable") if e.get("role") == "ack")

    wait_until(lambda: ack_failures() >= 4, timeout=60, message="the acker retried a few times")
    claimed = executions(db)
    # About one batch ran (slots freed before the first ack failure was known may have been
    # refilled once); the rest waits, claimable by any healthy worker, instead of piling up as
    # 'running' under a worker that cannot finish them.
    states = Counter(job_states(db).values())
    assert 0 < len(claimed) <= 2 * concurrency, (claimed, states)
    assert states["available"] == len(ids) - len(claimed), (claimed, states)

    set_connection_limit(db, worker_role, -1)
    wait_all_completed(db, ids, timeout=60)
    assert_ran_exactly_once(db, ids)
    assert worker.stop() == 0, worker.describe()


# --- a database restart that outlasts a lease ---


def test_leases_hold_for_their_full_length_after_a_database_restart(private_server: PrivateServer) -> None:
    # While the server is down no worker can heartbeat: rescuing as soon as it is back would re-run
    # the jobs of every live worker that is only reconnecting (the soak saw exactly that).
    lease = 3.0
    with private_server.admin() as admin:
        store = WorkerStore(admin)
        job_id = pgqueue.App().enqueue(admin, "noop", {})
        store.heartbeat_worker({"id": "w-reconnecting", "hostname": "h", "pid": 1, "queues": [],
                                "concurrency": 1, "lease_seconds": lease})
        admin.execute("UPDATE pgqueue.jobs SET state = 'running', attempt = 1, worker_id = 'w-reconnecting', "
                      "lease_token = gen_random_uuid(), started_at = now() WHERE id = %s", [job_id])
    private_server.stop()
    time.sleep(lease + 0.5)  # the lease ran out while the server was down
    private_server.start()
    with private_server.admin() as admin:
        store = WorkerStore(admin)
        expired = admin.execute("SELECT lease_expires_at < now() FROM pgqueue.workers").fetchone()
        assert expired == (True,)
        assert store.rescue_jobs() == [], "rescued while the worker could not have heartbeated"
        # The worker that never comes back is rescued one lease after the restart.
        rescued = wait_until(store.rescue_jobs, timeout=lease + 10, message="rescued after a lease")
        assert rescued == [(job_id, "available")]
