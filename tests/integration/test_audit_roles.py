"""The audit trail holds against pgqueue's own roles, and against its table owner.

A worker or admin login may DELETE audit rows and mark seals pruned, because retention must.
The database lets that happen only as retention does it: a whole seal at a time, oldest first.
What the database cannot judge (a seal pruned before the audit retention was up, a chain cut by a
superuser who bypassed the triggers) ``pgqueue audit verify`` reports.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

from pgqueue import App, _audit
from pgqueue._db.audit import AuditStore
from tests.e2e.test_cli import run
from tests.helpers import wait_until
from tests.integration.test_audit import _tamper
from tests.shipped_roles import Logins, apply_roles_sql, shipped_role_logins

Conn = psycopg.Connection[TupleRow]


@pytest.fixture(scope="module")
def logins(pg_server_dsn: str) -> Iterator[Logins]:
    with shipped_role_logins(pg_server_dsn) as made:
        yield made


@pytest.fixture
def as_role(dsn: str, pg_server_dsn: str, logins: Logins) -> Any:
    apply_roles_sql(dsn, pg_server_dsn)
    return lambda role: logins.dsn(dsn, role)


@pytest.fixture
def owner(dsn: str) -> Iterator[Conn]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def sealed_windows(conn: Conn, windows: int = 3) -> list[tuple[int, int, int]]:
    """Enqueue and seal ``windows`` times, so that each batch of rows is in seals of its own;
    returns (first seal_no, last seal_no, events) per window."""
    app = App()
    made: list[tuple[int, int, int]] = []
    for window in range(windows):
        for n in range(3):
            app.enqueue(conn, "t", {"window": window, "n": n})
        wait_until(lambda: _audit.seal_pending(conn).seals >= 0 and _audit.verify(conn).pending_events == 0,
                   timeout=60, message="every committed row sealed")
        row = conn.execute("SELECT min(seal_no), max(seal_no), sum(events) FROM pgqueue.audit_seals "
                           "WHERE seal_no > %s", [made[-1][1] if made else 0]).fetchone()
        assert row is not None
        made.append((int(row[0]), int(row[1]), int(row[2])))
    return made


def head_digest(conn: Conn) -> str:
    report = _audit.verify(conn)
    assert report.ok, report.problems
    assert report.head_digest is not None
    return report.head_digest


def cut_window(conn: Conn, first: int, last: int) -> None:
    """What the issue found a worker login could do: delete a sealed window and mark its seals pruned."""
    with conn.transaction():
        conn.execute("DELETE FROM pgqueue.job_events AS e USING pgqueue.audit_seals AS s "
                     "WHERE s.seal_no BETWEEN %s AND %s AND e.xid >= s.xid_from AND e.xid < s.xid_to", [first, last])
        conn.execute("UPDATE pgqueue.audit_seals SET pruned_at = now() WHERE seal_no BETWEEN %s AND %s",
                     [first, last])


@pytest.mark.parametrize("role", ["worker", "admin"])
def test_a_worker_or_admin_login_cannot_cut_a_sealed_window_out_of_the_trail(as_role: Any, owner: Conn,
                                                                              role: str) -> None:
    windows = sealed_windows(owner)
    recorded = head_digest(owner)
    first, last, _ = windows[1]
    with psycopg.connect(as_role(role), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not be deleted"):
            cut_window(conn, first, last)
        # Marking first, deleting after, is refused as well.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="before the seals older than it"):
            conn.execute("UPDATE pgqueue.audit_seals SET pruned_at = now() WHERE seal_no = %s", [first])

    verified = run(as_role("reader"), "audit", "verify", "--expect", recorded)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert owner.execute("SELECT count(*) FROM pgqueue.audit_seals WHERE pruned_at IS NOT NULL").fetchone() == (0,)


def test_the_table_owner_cannot_cut_a_window_either(owner: Conn) -> None:
    windows = sealed_windows(owner)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not be deleted"):
        cut_window(owner, windows[1][0], windows[1][1])


def test_retention_as_a_worker_login_prunes_the_oldest_seals_and_verify_then_holds_it_to_the_audit_retention(
        as_role: Any, owner: Conn) -> None:
    windows = sealed_windows(owner)
    first, last, events = windows[0]
    with psycopg.connect(as_role("worker"), autocommit=True) as conn:
        deleted = _audit.prune_sealed(conn, before=conn.execute("SELECT now()").fetchone()[0],  # type: ignore[index]
                                      max_seals=last - first + 1)
    assert deleted == events
    reader = as_role("reader")

    early = run(reader, "audit", "verify")  # PGQUEUE_RETAIN_AUDIT's default: 30 days
    assert early.returncode == 1
    assert f"seal {first} " in early.stdout
    assert "before the audit retention (30 days, 0:00:00) was up" in early.stdout + early.stderr
    with psycopg.connect(reader, autocommit=True) as conn:
        kept_forever = _audit.verify(conn, min_retention=math.inf)
        assert not kept_forever.ok
        assert "the audit retention is 'never'" in kept_forever.problems[0]
        on_time = _audit.verify(conn, min_retention=0.0)
        assert on_time.ok, on_time.problems
        assert on_time.pruned_seals == last - first + 1


def test_rows_not_sealed_yet_cannot_be_deleted_by_anyone(as_role: Any, owner: Conn) -> None:
    sealed_windows(owner, windows=1)
    App().enqueue(owner, "t", {})  # pending
    pending = "DELETE FROM pgqueue.job_events WHERE xid >= (SELECT max(xid_to) FROM pgqueue.audit_seals)"
    for conn_dsn in (as_role("worker"), as_role("admin")):
        with psycopg.connect(conn_dsn, autocommit=True) as conn, pytest.raises(
                psycopg.errors.InsufficientPrivilege, match="may not be deleted"):
            conn.execute(pending)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not be deleted"):
        owner.execute(pending)
    # Before any seal exists, nothing at all can be deleted.
    owner.execute("SET session_replication_role = replica")
    owner.execute("DELETE FROM pgqueue.audit_seals")
    owner.execute("SET session_replication_role = origin")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="the oldest seal not pruned is none"):
        owner.execute("DELETE FROM pgqueue.job_events")


@pytest.mark.parametrize(("statement", "refused_with"), [
    ("UPDATE pgqueue.audit_seals SET digest = sha256(digest) WHERE seal_no = 1", "may only be marked pruned"),
    ("UPDATE pgqueue.audit_seals SET last_at = last_at - interval '60 days' WHERE seal_no = 1",
     "may only be marked pruned"),
    ("DELETE FROM pgqueue.audit_seals WHERE seal_no = 2", "seals are never removed"),
    ("TRUNCATE pgqueue.audit_seals", "seals are never removed"),
    # A seal that does not continue the chain: a gap, a re-cut range, a new genesis.
    ("INSERT INTO pgqueue.audit_seals SELECT seal_no + 2, xid_to, xid_to, 1, now(), now(), digest, digest "
     "FROM pgqueue.audit_seals ORDER BY seal_no DESC LIMIT 1", "does not continue the chain"),
    ("INSERT INTO pgqueue.audit_seals SELECT seal_no + 1, xid_from, pg_snapshot_xmin(pg_current_snapshot()), 1, "
     "now(), now(), digest, digest FROM pgqueue.audit_seals ORDER BY seal_no DESC LIMIT 1",
     "does not continue the chain"),
    ("INSERT INTO pgqueue.audit_seals SELECT seal_no + 1, xid_to, pg_snapshot_xmin(pg_current_snapshot()), 1, "
     "now(), now(), sha256(convert_to('pgqueue audit chain v1', 'UTF8')), digest "
     "FROM pgqueue.audit_seals ORDER BY seal_no DESC LIMIT 1", "does not continue the chain"),
    # A seal over transactions still running: rows could still appear inside its range.
    ("INSERT INTO pgqueue.audit_seals SELECT seal_no + 1, xid_to, "
     "(pg_current_xact_id()::text::numeric + 1)::text::xid8, 1, now(), now(), digest, digest "
     "FROM pgqueue.audit_seals ORDER BY seal_no DESC LIMIT 1", "still running"),
    # Pruning a seal whose rows are still there.
    ("UPDATE pgqueue.audit_seals SET pruned_at = now() WHERE seal_no = 1", "still has rows"),
])
def test_seals_cannot_be_altered_removed_forged_or_marked_pruned_with_their_rows_there(
        owner: Conn, statement: str, refused_with: str) -> None:
    sealed_windows(owner, windows=2)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match=refused_with):
        owner.execute(statement)


def test_a_pruned_seal_stays_pruned_with_the_database_clocks_time(owner: Conn) -> None:
    first, last, _ = sealed_windows(owner, windows=1)[0]
    assert _audit.prune_sealed(owner, before=owner.execute("SELECT now() + interval '1 day'").fetchone()[0]) > 0  # type: ignore[index]
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may only be marked pruned"):
        owner.execute("UPDATE pgqueue.audit_seals SET pruned_at = NULL WHERE seal_no = %s", [first])
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may only be marked pruned"):
        owner.execute("UPDATE pgqueue.audit_seals SET pruned_at = now() WHERE seal_no = %s", [last])
    # A back-dated pruned_at is replaced by the transaction's now().
    owner.execute("SET session_replication_role = replica")
    owner.execute("UPDATE pgqueue.audit_seals SET pruned_at = NULL WHERE seal_no = %s", [first])
    owner.execute("SET session_replication_role = origin")
    with owner.transaction():
        owner.execute("UPDATE pgqueue.audit_seals SET pruned_at = now() - interval '1 year' WHERE seal_no = %s",
                      [first])
        pruned_at, now = owner.execute("SELECT pruned_at, now() FROM pgqueue.audit_seals WHERE seal_no = %s",
                                       [first]).fetchone()  # type: ignore[misc]
    assert pruned_at == now


def test_verify_reports_a_window_cut_by_someone_who_bypassed_the_triggers(owner: Conn) -> None:
    windows = sealed_windows(owner)
    first, last, _ = windows[1]
    _tamper(owner, "DELETE FROM pgqueue.job_events AS e USING pgqueue.audit_seals AS s WHERE s.seal_no BETWEEN %s "
                   "AND %s AND e.xid >= s.xid_from AND e.xid < s.xid_to", [first, last])
    _tamper(owner, "UPDATE pgqueue.audit_seals SET pruned_at = now() - interval '1 year' "
                   "WHERE seal_no BETWEEN %s AND %s", [first, last])

    report = _audit.verify(owner)

    assert not report.ok
    assert any(f"seal {first} " in p and "a window was cut out of the trail" in p for p in report.problems), \
        report.problems


def test_verify_reports_a_seal_whose_recorded_time_span_is_not_its_rows(owner: Conn) -> None:
    sealed_windows(owner, windows=1)
    _tamper(owner, "UPDATE pgqueue.audit_seals SET last_at = last_at - interval '60 days', "
                   "first_at = first_at - interval '60 days' WHERE seal_no = 1")

    report = _audit.verify(owner)

    assert any(p.startswith("seal 1 ") and "the seal was forged" in p for p in report.problems), report.problems


def test_a_sealer_that_loses_the_race_for_a_seal_number_inserts_nothing_and_carries_on(owner: Conn,
                                                                                     dsn: str) -> None:
    app = App()
    for n in range(3):
        app.enqueue(owner, "t", {"n": n})
    newest = owner.execute("SELECT max(xid) FROM pgqueue.job_events").fetchone()[0]  # type: ignore[index]
    # Once every transaction older than the rows has finished, any sealer takes them all.
    wait_until(lambda: AuditStore(owner).head().horizon > int(str(newest)), timeout=60,
               message="the sealing horizon to pass the rows")
    with psycopg.connect(dsn) as first, psycopg.connect(dsn, autocommit=True) as second:
        store = AuditStore(first)
        horizon = store.head().horizon
        (rng,) = store.range_digests([(0, horizon)])
        assert store.insert_seal(1, 0, horizon, rng, _audit.GENESIS, _audit.chain(_audit.GENESIS, rng.digest))
        errors: list[BaseException] = []

        def seal() -> None:
            try:
                _audit.seal_pending(second)
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                errors.append(exc)

        racer = threading.Thread(target=seal)
        racer.start()
        pid = second.info.backend_pid
        wait_until(lambda: owner.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                         [pid]).fetchone() == ("Lock",),
                   timeout=30, message="the second sealer to wait on seal 1")
        first.commit()
        racer.join(timeout=30)
        assert not errors, errors
        # A sealer that read the head before seal 1 existed: the trigger lets ON CONFLICT decide.
        assert not AuditStore(second).insert_seal(1, 0, horizon, rng, _audit.GENESIS,
                                                  _audit.chain(_audit.GENESIS, rng.digest))
    report = _audit.verify(owner)
    assert report.ok, report.problems
    assert report.seals == 1
