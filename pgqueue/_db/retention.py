"""Retention (``retention.sql``): delete finished work by age, in batches, and vacuum ``pgqueue.jobs``.

The store runs SQL and returns plain values; :mod:`pgqueue._retention` decides what to delete,
in which order and when to vacuum.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString, NamedTuple

import psycopg

from pgqueue._db.cursors import execute_on
from pgqueue._db.errors import translate_errors
from pgqueue._db.queries import load_queries
from pgqueue._payload import encode_json


class RetentionQueries(NamedTuple):
    retention_cutoffs: LiteralString
    delete_completed_jobs: LiteralString
    delete_failed_jobs: LiteralString
    count_prunable_jobs: LiteralString
    delete_schedule_runs: LiteralString
    count_prunable_schedule_runs: LiteralString
    insert_prune_event: LiteralString
    jobs_vacuum_state: LiteralString
    vacuum_jobs: LiteralString


RETENTION = load_queries(RetentionQueries, "retention.sql")


@dataclass(frozen=True)
class Cutoffs:
    """Database instants before which rows are pruned (None: kept forever)."""

    completed_before: datetime | None
    failed_before: datetime | None
    audit_before: datetime | None


@dataclass(frozen=True)
class VacuumState:
    autovacuum: bool
    may_vacuum: bool
    live: int
    dead: int


class RetentionStore:
    """Retention queries on one psycopg connection; transactions are the caller's."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def cutoffs(self, completed: float | None, failed: float | None, audit: float | None) -> Cutoffs:
        with translate_errors():
            row = execute_on(self.conn, RETENTION.retention_cutoffs,
                                    {"completed": completed, "failed": failed, "audit": audit}).fetchone()
        assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
        return Cutoffs(*row)

    def delete_completed_jobs(self, before: datetime, limit: int) -> dict[str, int]:
        """Delete up to ``limit`` completed jobs finished before ``before``; rows deleted per state."""
        return self._delete_jobs(RETENTION.delete_completed_jobs, before, limit)

    def delete_failed_jobs(self, before: datetime, limit: int) -> dict[str, int]:
        """Delete up to ``limit`` failed or cancelled jobs finished before ``before``."""
        return self._delete_jobs(RETENTION.delete_failed_jobs, before, limit)

    def _delete_jobs(self, query: LiteralString, before: datetime, limit: int) -> dict[str, int]:
        with translate_errors():
            rows = execute_on(self.conn, query, {"before": before, "limit": limit}).fetchall()
        return {str(state): int(count) for state, count in rows}

    def count_prunable_jobs(self, cutoffs: Cutoffs) -> dict[str, int]:
        with translate_errors():
            row = execute_on(self.conn, RETENTION.count_prunable_jobs, {
                "completed_before": cutoffs.completed_before, "failed_before": cutoffs.failed_before}).fetchone()
        assert row is not None  # noqa: S101 - an aggregate without GROUP BY returns one row
        return {"completed": int(row[0]), "failed": int(row[1]), "cancelled": int(row[2])}

    def delete_schedule_runs(self, before: datetime, limit: int) -> int:
        with translate_errors():
            row = execute_on(self.conn, RETENTION.delete_schedule_runs, {"before": before, "limit": limit}).fetchone()
        return int(row[0]) if row else 0

    def count_prunable_schedule_runs(self, before: datetime) -> int:
        with translate_errors():
            row = execute_on(self.conn, RETENTION.count_prunable_schedule_runs, {"before": before}).fetchone()
        return int(row[0]) if row else 0

    def insert_prune_event(self, actor: str, detail: dict[str, Any]) -> None:
        with translate_errors():
            execute_on(self.conn, RETENTION.insert_prune_event, {"actor": actor, "detail": encode_json(detail)})

    def vacuum_state(self) -> VacuumState:
        with translate_errors():
            row = execute_on(self.conn, RETENTION.jobs_vacuum_state).fetchone()
        assert row is not None  # noqa: S101 - pgqueue.jobs exists once the schema does
        autovacuum, may_vacuum, live, dead = row
        return VacuumState(bool(autovacuum), bool(may_vacuum), int(live), int(dead))

    def vacuum_jobs(self) -> None:
        """``VACUUM pgqueue.jobs``; the connection must be in autocommit mode."""
        with translate_errors():
            execute_on(self.conn, RETENTION.vacuum_jobs)
