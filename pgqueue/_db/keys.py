"""Encryption at rest (``keys.sql``): the ciphertexts ``pgqueue keys rotate`` re-encrypts and the
audit row each run leaves. :mod:`pgqueue._key_rotation` decides what to re-encrypt; this store
only reads, locks and writes rows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg.rows import dict_row

from pgqueue._db.cursors import cursor_on, execute_on
from pgqueue._db.errors import translate_errors
from pgqueue._db.queries import load_queries
from pgqueue._payload import encode_json


class KeyQueries(NamedTuple):
    count_stale_ciphertexts: LiteralString
    lock_stale_ciphertexts: LiteralString
    update_ciphertexts: LiteralString
    record_key_rotation: LiteralString


KEYS = load_queries(KeyQueries, "keys.sql")


@dataclass(frozen=True)
class StoredCiphertexts:
    """A job's ciphertexts as `keys rotate` reads and writes them (None: absent, or left as is)."""

    job_id: int
    task: str
    args: bytes | None
    result: bytes | None
    error: bytes | None
    progress_note: bytes | None = None


class KeyStore:
    """Key-rotation statements on one psycopg connection of the caller's (an operator's session)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    @contextmanager
    def transaction(self, *, rollback: bool = False) -> Iterator[None]:
        """One transaction of this store's connection (committed, or rolled back when ``rollback``)."""
        with translate_errors(), self.conn.transaction(force_rollback=rollback):
            yield

    def count_stale_ciphertexts(self, key_id: bytes) -> dict[str, int]:
        with translate_errors(), cursor_on(self.conn, row_factory=dict_row) as cur:
            cur.execute(KEYS.count_stale_ciphertexts, {"key_id": key_id})
            row = cur.fetchone()
        return ({k: int(v) for k, v in row.items()} if row
                else {"args": 0, "results": 0, "errors": 0, "progress_notes": 0})

    def lock_stale_ciphertexts(self, key_id: bytes, after_id: int, limit: int) -> list[StoredCiphertexts]:
        with translate_errors():
            rows = execute_on(self.conn, KEYS.lock_stale_ciphertexts,
                                     {"key_id": key_id, "after_id": after_id, "limit": limit}).fetchall()
        return [StoredCiphertexts(*row) for row in rows]

    def update_ciphertexts(self, rows: Sequence[StoredCiphertexts]) -> None:
        with translate_errors():
            execute_on(self.conn, KEYS.update_ciphertexts, {
                "ids": [r.job_id for r in rows],
                "args_encrypted": [r.args for r in rows],
                "results_encrypted": [r.result for r in rows],
                "errors_encrypted": [r.error for r in rows],
                "progress_notes_encrypted": [r.progress_note for r in rows],
            })

    def record_key_rotation(self, actor: str, detail: dict[str, Any]) -> None:
        with translate_errors():
            execute_on(self.conn, KEYS.record_key_rotation, {"actor": actor, "detail": encode_json(detail)})
