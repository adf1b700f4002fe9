"""A scratch run's marker session (pgqueue/_db/databases.py ScratchRun): it must stay up as long as
its run, or the run's databases look abandoned to another run's sweep while they are in use."""

from __future__ import annotations

import time
from urllib.parse import quote

import psycopg

from pgqueue._db.databases import RUN_MARKER, DatabaseClaim, ScratchRun
from tests.helpers import wait_until


def marker_pids(dsn: str, run: ScratchRun) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                            [RUN_MARKER + run.name]).fetchall()
    return [int(row[0]) for row in rows]


def test_the_marker_outlives_a_servers_idle_session_timeout(pg_server_dsn: str) -> None:
    # Every session of this DSN would be ended after 0.5 s idle: the marker opts out. (Before
    # PostgreSQL 14 there is no such timeout, and the marker simply stays.)
    dsn = pg_server_dsn
    with psycopg.connect(pg_server_dsn) as conn:
        if conn.info.server_version >= 140000:
            options = quote("-c idle_session_timeout=500")
            dsn = f"{pg_server_dsn}{'&' if '?' in pg_server_dsn else '?'}options={options}"
    run = ScratchRun(dsn, "pgqueue_markertest_")
    run.start()
    try:
        time.sleep(1.5)
        assert len(marker_pids(pg_server_dsn, run)) == 1
    finally:
        run.close()
    # The backend leaves pg_stat_activity a moment after the client closed its session.
    wait_until(lambda: marker_pids(pg_server_dsn, run) == [], message="the marker session gone")


def test_a_claim_still_refuses_while_the_earlier_run_lives(pg_server_dsn: str) -> None:
    first, second = (DatabaseClaim(pg_server_dsn, "pgqueue_claimtest_live", "demo") for _ in range(2))
    try:
        assert first.acquire() is None
        started = time.monotonic()
        assert second.acquire() is not None
        assert time.monotonic() - started >= 0.9  # it waited out the grace for an ending session
    finally:
        first.close()
        second.close()


def test_keep_alive_reopens_a_lost_marker(pg_server_dsn: str) -> None:
    run = ScratchRun(pg_server_dsn, "pgqueue_markertest_")
    run.start()
    try:
        [pid] = marker_pids(pg_server_dsn, run)
        with psycopg.connect(pg_server_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", [pid])
        assert marker_pids(pg_server_dsn, run) == []

        run.keep_alive()

        wait_until(lambda: len(marker_pids(pg_server_dsn, run)) == 1, message="a new marker session")
    finally:
        run.close()


def test_a_database_claim_is_held_by_the_first_run_until_it_closes(pg_server_dsn: str) -> None:
    # Up to 63 bytes of the marker's name count (the server cuts application_name there): two
    # claims of a long name still see each other.
    database = "pgqueue_claimtest_" + "x" * 50
    first, second = (DatabaseClaim(pg_server_dsn, database, "demo") for _ in range(2))
    try:
        assert first.acquire() is None
        holder = second.acquire()
        assert holder is not None
        with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
            row = conn.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s", [holder]).fetchone()
        assert row is not None
        assert str(row[0]).startswith("pgqueue-demo:pgqueue_claimtest_")
        # A claim of another database is independent.
        other = DatabaseClaim(pg_server_dsn, "pgqueue_claimtest_other", "demo")
        assert other.acquire() is None
        other.close()
        # Right after the first run ends, its backend may still be listed while it exits: the
        # claim waits that out instead of refusing (a script running two demos in a row).
        first.close()
        assert second.acquire() is None
    finally:
        first.close()
        second.close()
