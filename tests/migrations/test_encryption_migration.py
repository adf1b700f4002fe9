"""Migration 0003 (ciphertext columns): its downgrade refuses to destroy encrypted payloads."""

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
