"""Migrations 0003 (ciphertext columns: the downgrade refuses to destroy encrypted payloads) and 0016
(the progress note's ciphertext column)."""

from __future__ import annotations

import psycopg
import pytest

from pgqueue import _migrate
from pgqueue.errors import PgqueueError


def columns(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT column_name FROM information_schema.columns "
                            "WHERE table_schema = 'pgqueue' AND table_name = 'jobs'").fetchall()
    return {r[0] for r in rows}


def test_downgrade_below_0003_refuses_while_encrypted_payloads_exist_and_drops_the_columns_after(
        empty_dsn: str) -> None:
    _migrate.upgrade(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO pgqueue.jobs (task, args_encrypted) VALUES ('t', '\\x01'::bytea)")

    with pytest.raises(PgqueueError, match="hold encrypted payloads that would be lost"):
        _migrate.downgrade(empty_dsn, "0002")
    assert {"args_encrypted", "result_encrypted", "error_encrypted"} <= columns(empty_dsn)

    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM pgqueue.jobs")
    _migrate.downgrade(empty_dsn, "0002")
    assert not {"args_encrypted", "result_encrypted", "error_encrypted"} & columns(empty_dsn)


def trigger_condition(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_get_triggerdef(oid) FROM pg_trigger "
                           "WHERE tgname = 'jobs_insert_fresh'").fetchone()
    assert row is not None
    return str(row[0])


def test_0016_adds_the_note_ciphertext_column_and_its_downgrade_drops_it_without_decrypting_a_note(
        empty_dsn: str) -> None:
    _migrate.upgrade(empty_dsn)
    assert "progress_note_encrypted" in columns(empty_dsn)
    assert "progress_note_encrypted IS NOT NULL" in trigger_condition(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        job_id = conn.execute("INSERT INTO pgqueue.jobs (task, state, attempt, progress, progress_note_encrypted) "
                              "VALUES ('t', 'running', 1, 50, '\\x01'::bytea) RETURNING id").fetchone()

    _migrate.downgrade(empty_dsn, "0015")

    assert "progress_note_encrypted" not in columns(empty_dsn)
    assert "progress_note_encrypted" not in trigger_condition(empty_dsn)
    with psycopg.connect(empty_dsn) as conn:
        kept = conn.execute("SELECT progress, progress_note FROM pgqueue.jobs WHERE id = %s", job_id).fetchone()
    assert kept == (50, None)

    _migrate.upgrade(empty_dsn)
    assert "progress_note_encrypted" in columns(empty_dsn)
    assert "progress_note_encrypted IS NOT NULL" in trigger_condition(empty_dsn)
