"""The tamper-evident audit trail on a real database: sealing, verification, tampering, pruning.

Tampering is done the way an attacker with database rights would: bypassing the append-only
triggers with ``session_replication_role = replica`` (superuser), then editing or deleting rows.

Sealing waits for the oldest transaction still running anywhere in the cluster, and other tests
run transactions on the same server at the same time: so tests seal with :func:`seal_all` (until
nothing is pending) and never count on how many seals one call makes, only on what seals must
hold (whole transactions, every row once).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

from pgqueue import App, JobSpec, _audit, _migrate, _retention
from pgqueue._db.jobs import JobStore
from pgqueue._db.queues import QueueStore
from pgqueue._worker.duties import AuditSealer
from pgqueue._worker.maintenance import Maintenance
from tests.helpers import wait_until

Conn = psycopg.Connection[TupleRow]
ACTOR = "cli:tester"


def _trail(conn: Conn, jobs: int = 20) -> list[int]:
    """A realistic trail: enqueues (single and bulk), cancels and retries, each writing events."""
    app = App()
    ids = [app.enqueue(conn, "t", {"n": n}) for n in range(jobs)]
    ids += app.enqueue_many(conn, [JobSpec("t", {"n": n}) for n in range(jobs)])
    store = JobStore(conn)
    store.cancel_job(ids[0], ACTOR)
    store.retry_jobs([ids[0]], None, False, ACTOR)
    QueueStore(conn).set_queue_paused("default", True, ACTOR)
    return ids


def _tamper(conn: Conn, sql: Any, params: Any = None) -> None:
    conn.execute("SET session_replication_role = replica")
    try:
        conn.execute(sql, params)
    finally:
        conn.execute("SET session_replication_role = origin")


def seal_all(conn: Conn, **options: Any) -> _audit.SealReport:
    """Seal until nothing committed is left unsealed (other tests' open transactions only delay it)."""
    seals = events = 0

    def done() -> bool:
        nonlocal seals, events
        report = _audit.seal_pending(conn, **options)
        seals, events = seals + report.seals, events + report.events
        return _audit.verify(conn).pending_events == 0

    wait_until(done, timeout=60, interval=0.1, message="every committed audit row sealed")
    return _audit.SealReport(seals, events)


def _seal_sizes(conn: Conn) -> list[int]:
    return [int(n) for (n,) in conn.execute("SELECT events FROM pgqueue.audit_seals ORDER BY seal_no").fetchall()]


def _event_count(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM pgqueue.job_events").fetchone()
    assert row is not None
    return int(row[0])


def test_sealing_covers_every_row_once_and_verify_passes(conn: Conn) -> None:
    conn.autocommit = True
    _trail(conn)
    first = seal_all(conn)
    assert first.seals >= 1
    assert first.events == _event_count(conn)
    assert _audit.seal_pending(conn) == _audit.SealReport(0, 0)  # nothing new: no empty seal

    _trail(conn, jobs=3)
    second = seal_all(conn)
    assert second.seals >= 1
    report = _audit.verify(conn)
    assert report.ok, report.problems
    assert (report.seals, report.events, report.pending_events) == (first.seals + second.seals,
                                                                   _event_count(conn), 0)
    assert report.head_seal == report.seals
    links = conn.execute("SELECT seal_no, prev_digest, digest FROM pgqueue.audit_seals ORDER BY 1").fetchall()
    assert bytes(links[0][1]) == _audit.GENESIS
    for earlier, later in itertools.pairwise(links):
        assert bytes(later[1]) == bytes(earlier[2])
    assert report.head_digest == bytes(links[-1][2]).hex()


def test_a_big_backlog_is_sealed_in_bounded_seals(conn: Conn) -> None:
    conn.autocommit = True
    for _ in range(3):  # three transactions, 40 rows each
        App().enqueue_many(conn, [JobSpec("t", {"n": n}) for n in range(40)])
    report = seal_all(conn, max_events=50)
    # Capped at 50 rows, a seal takes whole transactions only: 40, 40, 40.
    assert (report.seals, report.events) == (3, 120)
    assert _seal_sizes(conn) == [40, 40, 40]
    assert _audit.verify(conn).ok


def test_one_transaction_larger_than_the_cap_is_sealed_whole(conn: Conn) -> None:
    conn.autocommit = True
    App().enqueue_many(conn, [JobSpec("t", {"n": n}) for n in range(30)])
    report = seal_all(conn, max_events=10)
    assert (report.seals, report.events) == (1, 30)
    assert _audit.verify(conn).ok


def test_rows_of_an_open_transaction_wait_for_it(conn: Conn, dsn: str) -> None:
    conn.autocommit = True
    App().enqueue(conn, "t", {})
    with psycopg.connect(dsn) as other:
        App().enqueue(other, "t", {})  # written, not committed
        sealed = wait_until(lambda: _audit.seal_pending(conn).events, timeout=60, message="the committed row")
        assert sealed == 1
        time.sleep(0.2)
        assert _audit.seal_pending(conn).events == 0  # the open transaction holds its row back
        other.commit()
    # Committed after the seal was made: it is past the sealed range, never inside it.
    assert seal_all(conn).events == 1
    assert _audit.verify(conn).ok


def test_sealing_while_many_writers_commit_out_of_order_never_gives_a_false_alarm(conn: Conn, dsn: str) -> None:
    # Transactions that take their xid early and commit late (and the reverse), while a sealer
    # runs continuously: every row must land in exactly one seal and verify must pass.
    conn.autocommit = True
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rnd = random.Random(seed)
        app = App()
        try:
            with psycopg.connect(dsn) as wconn:
                while not stop.is_set():
                    app.enqueue(wconn, "t", {"seed": seed})
                    time.sleep(rnd.random() * 0.05)
                    app.enqueue_many(wconn, [JobSpec("t", {"n": n}) for n in range(rnd.randint(1, 5))])
                    if rnd.random() < 0.2:
                        wconn.rollback()  # aborted transactions leave no rows and no hole
                    else:
                        wconn.commit()
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    seals = 0
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        seals += _audit.seal_pending(conn, max_events=25).seals
        time.sleep(0.01)
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors, errors
    seals += seal_all(conn).seals
    assert seals > 1
    report = _audit.verify(conn)
    assert report.ok, report.problems
    assert report.events == _event_count(conn)
    assert report.pending_events == 0


def test_an_edited_row_fails_verify_naming_its_seal(conn: Conn) -> None:
    conn.autocommit = True
    ids = _trail(conn)
    seal_all(conn)
    _trail(conn, jobs=2)
    seal_all(conn)
    _tamper(conn, "UPDATE pgqueue.job_events SET actor = 'someone-else' WHERE job_id = %s", [ids[3]])
    row = conn.execute("SELECT s.seal_no FROM pgqueue.audit_seals AS s JOIN pgqueue.job_events AS e "
                       "ON e.xid >= s.xid_from AND e.xid < s.xid_to WHERE e.job_id = %s", [ids[3]]).fetchone()
    assert row is not None
    report = _audit.verify(conn)
    assert not report.ok
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"seal {row[0]} (events at ")
    assert "a row was edited" in report.problems[0]


def test_a_deleted_or_inserted_row_fails_verify(conn: Conn) -> None:
    conn.autocommit = True
    ids = _trail(conn)
    seal_all(conn)
    # Deleting from the middle of the trail takes bypassing the triggers (test_audit_roles.py).
    _tamper(conn, "DELETE FROM pgqueue.job_events WHERE job_id = %s", [ids[5]])
    report = _audit.verify(conn)
    assert not report.ok
    assert "rows were deleted or inserted" in report.problems[0]

    # Put back a row with the sealed xid forged: the count matches again, the digest does not.
    sealed_xid = conn.execute("SELECT xid_from FROM pgqueue.audit_seals WHERE seal_no = 1").fetchone()
    assert sealed_xid is not None
    _tamper(conn, "INSERT INTO pgqueue.job_events (job_id, event, to_state, attempt, xid) "
                  "VALUES (%s, 'enqueued', 'available', 0, (SELECT max(xid) FROM pgqueue.job_events))", [ids[5]])
    assert not _audit.verify(conn).ok


def test_a_removed_or_altered_seal_breaks_the_chain(conn: Conn) -> None:
    conn.autocommit = True
    for _ in range(3):
        _trail(conn, jobs=2)
        seal_all(conn)
    # The audit_seals_chain trigger refuses both (test_audit_roles.py): only bypassing it alters seals.
    _tamper(conn, "UPDATE pgqueue.audit_seals SET digest = sha256(digest) WHERE seal_no = 2")
    altered = _audit.verify(conn)
    assert any("seal 3" in p and "does not link to seal 2" in p for p in altered.problems), altered.problems
    _tamper(conn, "DELETE FROM pgqueue.audit_seals WHERE seal_no = 2")
    cut = _audit.verify(conn)
    assert any("seals 2..2 are missing" in p for p in cut.problems), cut.problems


def test_a_rebuilt_chain_is_caught_by_a_recorded_head_digest(conn: Conn) -> None:
    conn.autocommit = True
    ids = _trail(conn)
    seal_all(conn)
    recorded = _audit.verify(conn).head_digest
    assert recorded is not None
    assert _audit.verify(conn, expect_digests=[recorded]).ok
    # Someone who can bypass the triggers on both tables edits a row and recomputes the whole chain.
    _tamper(conn, "UPDATE pgqueue.job_events SET actor = 'x' WHERE job_id = %s", [ids[1]])
    _tamper(conn, "DELETE FROM pgqueue.audit_seals")
    seal_all(conn)
    assert _audit.verify(conn).ok  # self-consistent again...
    rebuilt = _audit.verify(conn, expect_digests=[recorded])
    assert not rebuilt.ok  # ...but the digest recorded elsewhere is gone
    assert "the chain was rebuilt" in rebuilt.problems[0]


def test_the_trail_refuses_updates_and_truncate(conn: Conn) -> None:
    conn.autocommit = True
    _trail(conn, jobs=1)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only: UPDATE"):
        conn.execute("UPDATE pgqueue.job_events SET actor = 'x'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only: TRUNCATE"):
        conn.execute("TRUNCATE pgqueue.job_events")


def _db_now(conn: Conn) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def test_pruning_removes_whole_old_seals_and_the_rest_still_verifies(conn: Conn, dsn: str) -> None:
    conn.autocommit = True
    _trail(conn, jobs=3)
    old = seal_all(conn)
    time.sleep(1.1)
    _trail(conn, jobs=2)
    new = seal_all(conn)
    # The cutoff: the newer rows' first time. now() - 1 s would also catch them when sealing them
    # had to wait over a second for other sessions of the cluster (the horizon is cluster-wide).
    cutoff = conn.execute("SELECT min(first_at) FROM pgqueue.audit_seals WHERE seal_no > %s",
                          [old.seals]).fetchone()[0]  # type: ignore[index]
    with psycopg.connect(dsn) as other:
        _trail(other, jobs=1)  # uncommitted while pruning: never pruned, never sealed
        assert _audit.prune_sealed(conn, _db_now(conn) - timedelta(hours=1)) == 0
        assert _audit.count_prunable(conn, cutoff) == old.events
        assert _audit.prune_sealed(conn, cutoff) == old.events
        other.commit()
    pruned = conn.execute("SELECT seal_no FROM pgqueue.audit_seals WHERE pruned_at IS NOT NULL ORDER BY 1").fetchall()
    assert pruned == [(n,) for n in range(1, old.seals + 1)]
    report = _audit.verify(conn)
    assert report.ok, report.problems
    assert (report.seals, report.pruned_seals) == (old.seals + new.seals, old.seals)
    assert report.events == new.events
    assert report.pending_events > 0

    # A row slipped back into a pruned range is an insertion.
    _tamper(conn, "INSERT INTO pgqueue.job_events (event, xid) "
                  "VALUES ('forged', (SELECT xid_from FROM pgqueue.audit_seals WHERE seal_no = 1))")
    forged = _audit.verify(conn)
    assert any("was pruned but 1 rows are back" in p for p in forged.problems), forged.problems


def test_job_trail_marks_each_row_with_its_seal_and_whether_it_holds(conn: Conn) -> None:
    conn.autocommit = True
    ids = _trail(conn, jobs=5)
    seal_all(conn)
    JobStore(conn).cancel_job(ids[2], ACTOR)  # not sealed yet
    events, intact = _audit.job_trail(conn, ids[2])
    assert [e["event"] for e in events] == ["enqueued", "cancelled"]
    sealed_in = events[0]["seal_no"]
    assert sealed_in is not None
    assert events[1]["seal_no"] is None
    assert intact == {sealed_in: True}
    _tamper(conn, "UPDATE pgqueue.job_events SET detail = '{\"x\": 1}' WHERE job_id = %s", [ids[2]])
    assert _audit.job_trail(conn, ids[2])[1] == {sealed_in: False}


def test_rows_written_before_migration_0002_belong_to_the_first_seal(empty_dsn: str) -> None:
    _migrate.upgrade(empty_dsn)
    _migrate.downgrade(empty_dsn, "0001")
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        # Today's enqueue writes columns that 0001 lacks (args_encrypted, 0003): write what an
        # enqueue of the 0001 era wrote, a job and its 'enqueued' event.
        conn.execute("WITH j AS (INSERT INTO pgqueue.jobs (task, args) SELECT 't', jsonb_build_object('n', n) "
                     "FROM generate_series(0, 4) AS n RETURNING id, state, attempt) "
                     "INSERT INTO pgqueue.job_events (job_id, event, to_state, attempt) "
                     "SELECT id, 'enqueued', state, attempt FROM j")
    _migrate.upgrade(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        App().enqueue(conn, "t", {})
        legacy = conn.execute("SELECT count(*) FROM pgqueue.job_events WHERE xid IS NULL").fetchone()
        assert legacy == (5,)
        assert seal_all(conn).events == 6
        assert _audit.verify(conn).ok
        _tamper(conn, "DELETE FROM pgqueue.job_events WHERE xid IS NULL AND job_id = 1")
        assert not _audit.verify(conn).ok


def test_the_maintenance_leader_seals_the_trail(dsn: str, conn: Conn) -> None:
    conn.autocommit = True
    _trail(conn, jobs=2)
    maintenance = Maintenance(dsn, "w-audit-test", lease_seconds=2.0, interval=0.1,
                              duties=[AuditSealer(interval=0.2)])
    maintenance.start()
    try:
        wait_until(lambda: _audit.verify(conn).seals >= 1, timeout=60, message="the leader sealed the trail")
        _trail(conn, jobs=1)
        wait_until(lambda: _audit.verify(conn).pending_events == 0, timeout=60,
                   message="the leader sealed the new rows")
    finally:
        maintenance.stop()
        maintenance.join(timeout=10)
    report = _audit.verify(conn)
    assert report.ok
    assert report.events == _event_count(conn)


def test_retention_prunes_old_audit_rows_a_seal_at_a_time_and_the_chain_still_verifies(conn: Conn) -> None:
    conn.autocommit = True
    _trail(conn, jobs=4)
    old = seal_all(conn)
    time.sleep(1.2)
    _trail(conn, jobs=1)  # newer than the cutoff, and not even sealed: kept
    policy = _retention.RetentionPolicy(completed=None, failed=None, audit=1.0)
    assert _retention.count_prunable(conn, policy).audit_events == old.events
    report = _retention.prune(conn, policy, "cli:tester", batch_size=10)
    assert report.audit_events == old.events
    assert report.finished
    summary = conn.execute("SELECT detail FROM pgqueue.job_events WHERE event = 'pruned'").fetchone()
    assert summary is not None
    assert summary[0]["audit_events"] == old.events
    assert _retention.prune(conn, policy, "cli:tester").audit_events == 0
    report_after = _audit.verify(conn)
    assert report_after.ok, report_after.problems
    assert report_after.pruned_seals == old.seals
