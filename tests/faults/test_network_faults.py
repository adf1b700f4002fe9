"""Network faults (issue 5, items 11 and 12): a worker reaches PostgreSQL through a TCP proxy of
the test's own (``tests/faults/tcp_proxy.py``) that stops forwarding without closing anything.

- Item 11, half-open: the proxied worker notices within a bound (its listener's probe), its jobs are
  rescued once by a worker connected directly, nothing is completed twice (the lease token fences
  the cut-off worker's late acks), and it works again once the network is back.
- Item 12, lost NOTIFYs: jobs enqueued while the worker was cut off start within poll + 2 s of the
  network coming back.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

import pgqueue
from pgqueue._db.sessions import NETWORK_TIMEOUT_ENV
from tests.faults.tcp_proxy import TcpProxy
from tests.helpers import wait_until
from tests.plugins.processes import (
    SpawnWorker,
    WorkerProcess,
    completion_events,
    parse_timestamp,
    wait_for_registration,
)

pytestmark = pytest.mark.slow

Db = psycopg.Connection[TupleRow]
POLL_SECONDS = 0.5
LEASE_SECONDS = 2.0
# The listener probes a quiet LISTEN session every max(1, min(poll, 5)) s, bounded by a 5 s timeout.
PROBE_TIMEOUT_SECONDS = 5.0
PROBE_EVERY_SECONDS = max(1.0, min(POLL_SECONDS, 5.0))
DETECTION_BOUND_SECONDS = PROBE_EVERY_SECONDS + PROBE_TIMEOUT_SECONDS
# Claims, acks, heartbeats: a wait for the server's answer ends after PGQUEUE_NETWORK_TIMEOUT_SECONDS
# (default 30 s; shortened here). The heartbeat ticks every 0.5 s; a session that stops answering is
# replaced once at once (which, with the path still dead, fails after connect_timeout, 5 s) before
# the heartbeat logs database.unavailable and backs off.
NETWORK_TIMEOUT_SECONDS = 4.0
HEARTBEAT_BOUND_SECONDS = 0.5 + NETWORK_TIMEOUT_SECONDS + 5.0
# After the network is back: the listener retries at most 10 s apart (its backoff cap), each connect
# attempt during the outage taking up to connect_timeout (5 s).
RECONNECT_BOUND_SECONDS = 10.0 + 5.0
BLACKHOLE_SECONDS = 20.0
SLACK_SECONDS = 3.0  # a loaded 2-core machine: scheduling, log flushing


@pytest.fixture
def proxy(fault_dsn: str) -> Iterator[TcpProxy]:
    params = psycopg.conninfo.conninfo_to_dict(fault_dsn)
    with TcpProxy(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)) as running:
        yield running


def through(proxy: TcpProxy, dsn: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, host="127.0.0.1", port=str(proxy.port))


def first_log_after(worker: WorkerProcess, event: str, after: float, **fields: str) -> float | None:
    times = [parse_timestamp(e) for e in worker.log_events(event)
             if parse_timestamp(e) >= after and all(e.get(k) == v for k, v in fields.items())]
    return min(times) if times else None


def wait_for_log(worker: WorkerProcess, event: str, after: float, timeout: float = 60.0, **fields: str) -> float:
    """When ``worker`` first logged ``event`` (with ``fields``) at or after ``after`` (epoch seconds)."""
    def logged() -> float | None:
        assert worker.alive(), worker.describe()
        return first_log_after(worker, event, after, **fields)

    found = wait_until(logged, timeout=timeout, message=f"{event} {fields or ''} logged by {worker.pid}")
    assert found is not None
    return found


def rows(db: Db, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    return db.execute(query, params).fetchall()


def states(db: Db, job_ids: list[int]) -> dict[int, str]:
    return {int(r[0]): str(r[1]) for r in rows(db, "SELECT id, state FROM pgqueue.jobs WHERE id = ANY(%s)",
                                               [job_ids])}


@pytest.fixture
def spawn_cut_off(spawn_worker: SpawnWorker, proxy: TcpProxy, fault_dsn: str) -> Callable[[], WorkerProcess]:
    """``pgqueue worker`` through the proxy, with a short network timeout; executions recorded directly."""

    def spawn() -> WorkerProcess:
        return spawn_worker(through(proxy, fault_dsn), concurrency=4, lease_seconds=LEASE_SECONDS,
                            poll_seconds=POLL_SECONDS, grace_seconds=5, record_dsn=fault_dsn,
                            env={NETWORK_TIMEOUT_ENV: str(NETWORK_TIMEOUT_SECONDS)})

    return spawn


def executions_by(db: Db, job_ids: list[int]) -> list[tuple[int, int, int, float]]:
    """(job_id, attempt, pid, epoch seconds) of each recorded execution."""
    return [(int(r[0]), int(r[1]), int(r[2]), float(r[3])) for r in rows(
        db, "SELECT job_id, attempt, pid, extract(epoch FROM at)::float8 FROM fault_executions "
            "WHERE job_id = ANY(%s) ORDER BY id", [job_ids])]


def events_of(db: Db, job_ids: list[int], event: str) -> Counter[int]:
    return Counter(int(r[0]) for r in rows(db, "SELECT job_id FROM pgqueue.job_events WHERE job_id = ANY(%s) "
                                               "AND event = %s", [job_ids, event]))


@pytest.mark.timing
@pytest.mark.timeout(180)
def test_half_open_network_is_noticed_jobs_are_rescued_once_and_the_worker_recovers(
        fault_dsn: str, db: Db, spawn_worker: SpawnWorker, spawn_cut_off: Callable[[], WorkerProcess],
        proxy: TcpProxy) -> None:
    cut_off = spawn_cut_off()
    cut_off_id = wait_for_registration(db, cut_off)
    app = pgqueue.App(fault_dsn)
    held = app.enqueue_many(None, [pgqueue.JobSpec("record", {"seconds": 3}) for _ in range(4)])
    wait_until(lambda: len(executions_by(db, held)) == 4, timeout=30, message="the proxied worker runs 4 jobs")
    assert {pid for _, _, pid, _ in executions_by(db, held)} == {cut_off.pid}

    proxy.blackhole()  # nothing closed, nothing delivered, in either direction
    cut_at = time.time()
    direct = spawn_worker(fault_dsn, concurrency=4, lease_seconds=LEASE_SECONDS, poll_seconds=POLL_SECONDS)
    wait_for_registration(db, direct)

    # Noticed by the listener's probe, and by the heartbeat's bounded wait for an answer.
    listener_noticed = wait_for_log(cut_off, "listener.disconnected", cut_at)
    heartbeat_noticed = wait_for_log(cut_off, "database.unavailable", cut_at, thread="heartbeat")
    # The worker's lease lapses; the direct worker (leader once the cut-off one's leadership lapses too)
    # rescues the held jobs and runs them, while the cut-off worker's own run of them goes unacked.
    wait_until(lambda: set(states(db, held).values()) == {"completed"}, timeout=60,
               message="held jobs rescued and completed by the direct worker")
    wait_until(lambda: time.time() - cut_at >= BLACKHOLE_SECONDS, timeout=BLACKHOLE_SECONDS + 5,
               message="the outage lasts its full length")
    assert cut_off.alive(), cut_off.describe()

    # The network comes back, but not the sessions that lived through the outage (their path is gone).
    proxy.resume(sever=True)
    resumed_at = time.time()
    reconnected = wait_for_log(cut_off, "listener.reconnected", resumed_at)
    wait_until(lambda: rows(db, "SELECT 1 FROM pgqueue.workers WHERE id = %s AND lease_expires_at > now()",
                            [cut_off_id]), timeout=30, message="the cut-off worker heartbeats again")
    # Fencing: its late acks for the rescued jobs were refused, not written over the direct worker's.
    wait_until(lambda: {int(e["job_id"]) for e in cut_off.log_events("job.lease_lost")} == set(held), timeout=60,
               message="the cut-off worker's acks of rescued jobs are refused")
    assert events_of(db, held, "rescued") == dict.fromkeys(held, 1)
    assert events_of(db, held, "completed") == dict.fromkeys(held, 1)
    assert completion_events(db) == dict.fromkeys(held, 1)
    assert sorted((job, attempt) for job, attempt, _, _ in executions_by(db, held)) == sorted(
        [(job, 1) for job in held] + [(job, 2) for job in held])

    # And it works again: with the direct worker gone, new jobs are the cut-off worker's to run.
    assert direct.stop() == 0
    after = app.enqueue_many(None, [pgqueue.JobSpec("record", {"n": n}) for n in range(5)])
    wait_until(lambda: set(states(db, after).values()) == {"completed"}, timeout=30,
               message="jobs after the outage completed by the cut-off worker")
    assert {pid for _, _, pid, _ in executions_by(db, after)} == {cut_off.pid}
    assert completion_events(db) == dict.fromkeys([*held, *after], 1)
    print(f"\nhalf-open: listener noticed after {listener_noticed - cut_at:.1f}s "  # noqa: T201 - measured, with -s
          f"(bound {DETECTION_BOUND_SECONDS:g}s), heartbeat after {heartbeat_noticed - cut_at:.1f}s "
          f"(bound {HEARTBEAT_BOUND_SECONDS:g}s); listening again {reconnected - resumed_at:.1f}s after resume")
    assert listener_noticed - cut_at <= DETECTION_BOUND_SECONDS + SLACK_SECONDS
    assert heartbeat_noticed - cut_at <= HEARTBEAT_BOUND_SECONDS + SLACK_SECONDS
    assert reconnected - resumed_at <= RECONNECT_BOUND_SECONDS + SLACK_SECONDS


@pytest.mark.timing
@pytest.mark.timeout(150)
def test_jobs_enqueued_while_the_worker_was_cut_off_start_within_poll_plus_2s_of_reconnection(
        fault_dsn: str, db: Db, spawn_cut_off: Callable[[], WorkerProcess], proxy: TcpProxy) -> None:
    worker = spawn_cut_off()
    wait_for_registration(db, worker)
    app = pgqueue.App(fault_dsn)
    warm = app.enqueue(None, "record", {"n": "before"})
    wait_until(lambda: states(db, [warm]) == {warm: "completed"}, timeout=30, message="a job before the gap")

    proxy.blackhole()
    cut_at = time.time()
    wait_for_log(worker, "listener.disconnected", cut_at)
    # Enqueued (and NOTIFYed) during the gap: nobody is listening on the worker's behalf.
    gap = [app.enqueue(None, "record", {"n": n}) for n in range(10)]
    proxy.resume(sever=True)
    resumed_at = time.time()
    reconnected = wait_for_log(worker, "listener.reconnected", resumed_at)
    wait_until(lambda: set(states(db, gap).values()) == {"completed"}, timeout=60, message="gap jobs completed")
    started = {job: at for job, attempt, _, at in executions_by(db, gap) if attempt == 1}
    latest = max(started.values()) - reconnected
    print(f"\nlost NOTIFYs: last gap job started {latest:.2f}s after the listener reconnected "  # noqa: T201
          f"({reconnected - resumed_at:.1f}s after the network came back)")
    assert set(started) == set(gap)
    assert latest <= POLL_SECONDS + 2, f"{latest:.2f}s"
    assert completion_events(db) == dict.fromkeys([warm, *gap], 1)
