"""The audit trail (``audit.sql``): a job's events, and the seal chain over ``pgqueue.job_events``.

The store runs SQL and returns rows; :mod:`pgqueue._audit` decides what to seal, chains the
digests and judges what verification finds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg.rows import dict_row

from pgqueue._db.cursors import cursor_on, execute_on
from pgqueue._db.errors import translate_errors
from pgqueue._db.queries import load_queries


class AuditQueries(NamedTuple):
    list_job_events: LiteralString
    last_seal: LiteralString
    seal_cap: LiteralString
    next_xid_after: LiteralString
    range_digests: LiteralString
    insert_seal: LiteralString
    list_seals: LiteralString
    get_seals: LiteralString
    count_seals: LiteralString
    count_pending_events: LiteralString
    may_seal: LiteralString
    prunable_seals: LiteralString
    count_prunable_events: LiteralString
    delete_sealed_events: LiteralString
    mark_seal_pruned: LiteralString
    events_horizon: LiteralString
    finished_events: LiteralString


AUDIT = load_queries(AuditQueries, "audit.sql")


@dataclass(frozen=True)
class Head:
    """The chain's last seal (None fields when there is none yet) and the sealing horizon."""

    seal_no: int | None
    xid_to: int | None
    digest: bytes | None
    horizon: int


@dataclass(frozen=True)
class RangeDigest:
    events: int
    first_at: datetime | None
    last_at: datetime | None
    digest: bytes


class AuditStore:
    """Audit-trail queries on one psycopg connection; transactions are the caller's."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def list_job_events(self, job_id: int) -> list[dict[str, Any]]:
        """One job's events in order, each with the ``seal_no`` covering it (None while pending)."""
        with translate_errors(), cursor_on(self.conn, row_factory=dict_row) as cur:
            cur.execute(AUDIT.list_job_events, {"job_id": job_id})
            return cur.fetchall()

    def head(self) -> Head:
        with translate_errors():
            row = execute_on(self.conn, AUDIT.last_seal).fetchone()
        assert row is not None  # noqa: S101 - a LEFT JOIN from one row always returns one row
        seal_no, xid_to, digest, horizon = row
        return Head(seal_no, _xid(xid_to), bytes(digest) if digest is not None else None, int(_xid(horizon) or 0))

    def seal_cap(self, xid_from: int, xid_to: int, max_events: int) -> int | None:
        with translate_errors():
            row = execute_on(self.conn, AUDIT.seal_cap, {"xid_from": str(xid_from), "xid_to": str(xid_to),
                                                       "max_events": max_events}).fetchone()
        return _xid(row[0]) if row else None

    def next_xid_after(self, xid: int, xid_to: int) -> int | None:
        with translate_errors():
            row = execute_on(self.conn, AUDIT.next_xid_after, {"xid": str(xid), "xid_to": str(xid_to)}).fetchone()
        return _xid(row[0]) if row else None

    def range_digests(self, ranges: Sequence[tuple[int, int]]) -> list[RangeDigest]:
        """Digest each ``[xid_from, xid_to)`` range, in the order given."""
        if not ranges:
            return []
        params = {"xid_from": [str(lo) for lo, _ in ranges], "xid_to": [str(hi) for _, hi in ranges]}
        with translate_errors():
            rows = execute_on(self.conn, AUDIT.range_digests, params).fetchall()
        return [RangeDigest(int(events), first_at, last_at, bytes(digest))
                for _, events, first_at, last_at, digest in rows]

    def insert_seal(self, seal_no: int, xid_from: int, xid_to: int, rng: RangeDigest, prev_digest: bytes,
                    digest: bytes) -> bool:
        """Insert a seal; False when a concurrent sealer already wrote this ``seal_no``."""
        with translate_errors():
            row = execute_on(self.conn, AUDIT.insert_seal, {
                "seal_no": seal_no, "xid_from": str(xid_from), "xid_to": str(xid_to), "events": rng.events,
                "first_at": rng.first_at, "last_at": rng.last_at, "prev_digest": prev_digest, "digest": digest,
            }).fetchone()
        return row is not None

    def list_seals(self, after: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` seals after ``after``, in chain order."""
        return self._seals(AUDIT.list_seals, {"after": after, "limit": limit})

    def get_seals(self, seal_nos: Sequence[int]) -> list[dict[str, Any]]:
        return self._seals(AUDIT.get_seals, {"seal_nos": list(seal_nos)})

    def _seals(self, query: LiteralString, params: dict[str, Any]) -> list[dict[str, Any]]:
        with translate_errors(), cursor_on(self.conn, row_factory=dict_row) as cur:
            cur.execute(query, params)
            rows = cur.fetchall()
        for row in rows:
            row["xid_from"], row["xid_to"] = _xid(row["xid_from"]), _xid(row["xid_to"])
            row["prev_digest"], row["digest"] = bytes(row["prev_digest"]), bytes(row["digest"])
        return rows

    def count_seals(self) -> int:
        with translate_errors():
            row = execute_on(self.conn, AUDIT.count_seals).fetchone()
        return int(row[0]) if row else 0

    def count_pending_events(self, xid_from: int) -> int:
        with translate_errors():
            row = execute_on(self.conn, AUDIT.count_pending_events, {"xid_from": str(xid_from)}).fetchone()
        return int(row[0]) if row else 0

    def may_seal(self) -> bool:
        with translate_errors():
            row = execute_on(self.conn, AUDIT.may_seal).fetchone()
        return bool(row and row[0])

    def prunable_seals(self, limit: int) -> list[tuple[int, int, int, datetime]]:
        """The oldest unpruned seals: (seal_no, xid_from, xid_to, last_at)."""
        with translate_errors():
            rows = execute_on(self.conn, AUDIT.prunable_seals, {"limit": limit}).fetchall()
        return [(int(n), int(_xid(lo) or 0), int(_xid(hi) or 0), last_at) for n, lo, hi, last_at in rows]

    def count_prunable_events(self, before: datetime) -> int:
        with translate_errors():
            row = execute_on(self.conn, AUDIT.count_prunable_events, {"before": before}).fetchone()
        return int(row[0]) if row else 0

    def prune_seal(self, seal_no: int, xid_from: int, xid_to: int) -> int:
        """Delete a sealed range's events and mark the seal pruned, atomically; returns rows deleted."""
        with translate_errors(), self.conn.transaction():
            deleted = execute_on(self.conn, AUDIT.delete_sealed_events,
                                        {"xid_from": str(xid_from), "xid_to": str(xid_to)}).rowcount
            execute_on(self.conn, AUDIT.mark_seal_pruned, {"seal_no": seal_no})
        return deleted


    # --- outcome counts for the metrics endpoint ---

    def events_horizon(self) -> int:
        """The oldest transaction still running: rows below it can no longer appear."""
        with translate_errors():
            row = execute_on(self.conn, AUDIT.events_horizon).fetchone()
        return int(row[0]) if row else 0

    def finished_events(self, xid_from: int, bounds: Sequence[float]) -> tuple[int, list[dict[str, Any]]]:
        """(the new horizon, outcome counts since ``xid_from`` per event, queue, task and run-time bucket)."""
        with translate_errors(), cursor_on(self.conn, row_factory=dict_row) as cur:
            rows = cur.execute(AUDIT.finished_events, {"xid_from": str(xid_from), "bounds": list(bounds)}).fetchall()
        horizon = int(rows[0]["horizon"]) if rows else xid_from
        return horizon, [row for row in rows if row["event"] is not None]


def _xid(value: Any) -> int | None:
    # psycopg has no xid8 loader: it arrives as its decimal text.
    return None if value is None else int(str(value))
