"""Queues (``queues.sql``): pause and resume, and per-queue figures. Sync only (the CLI, the demo)."""

from __future__ import annotations

from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg.rows import dict_row

from pgqueue._db.cursors import cursor_on, execute_on
from pgqueue._db.errors import translate_errors
from pgqueue._db.notifications import NOTIFY_CHANNEL
from pgqueue._db.queries import load_queries


class QueueQueries(NamedTuple):
    set_queue_paused: LiteralString
    queue_stats: LiteralString
    summarize_queues: LiteralString
    queue_exists: LiteralString
    set_queue_limits: LiteralString
    rate_window_starts: LiteralString
    list_task_limits: LiteralString


QUEUES = load_queries(QueueQueries, "queues.sql")


class QueueStore:
    """Queue statements on one psycopg connection; transactions are the caller's."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def set_queue_paused(self, queue: str, paused: bool, actor: str | None, source: str | None = None) -> None:
        """Pause or resume ``queue`` (resuming wakes idle workers); writes the audit row (with
        ``source``, where the action came from, in its detail when given)."""
        with translate_errors():
            execute_on(self.conn, QUEUES.set_queue_paused, {"queue": queue, "paused": paused, "actor": actor,
                                                        "source": source, "channel": NOTIFY_CHANNEL})

    def queue_stats(self) -> list[dict[str, Any]]:
        with translate_errors(), cursor_on(self.conn, row_factory=dict_row) as cur:
            cur.execute(QUEUES.queue_stats)
            return cur.fetchall()

    def summarize_queues(self) -> list[dict[str, Any]]:
        with translate_errors(), cursor_on(self.conn, row_factory=dict_row) as cur:
            cur.execute(QUEUES.summarize_queues)
            return cur.fetchall()

    def exists(self, queue: str) -> bool:
        """A queue exists once it has a settings row or any job."""
        with translate_errors():
            row = execute_on(self.conn, QUEUES.queue_exists, {"queue": queue}).fetchone()
        return bool(row and row[0])

    def set_limits(self, queue: str, *, concurrency: int | None, set_concurrency: bool,
                   rate: tuple[int, int] | None, set_rate: bool, actor: str | None,
                   source: str | None = None) -> dict[str, Any]:
        """Store the limits passed (``set_*``), keep the others; the queue's row comes back."""
        params = {
            "queue": queue, "concurrency": concurrency, "set_concurrency": set_concurrency,
            "rate_limit": rate[0] if rate else None, "rate_period_seconds": rate[1] if rate else None,
            "set_rate": set_rate, "actor": actor, "source": source,
        }
        with translate_errors(), cursor_on(self.conn, row_factory=dict_row) as cur:
            row = cur.execute(QUEUES.set_queue_limits, params).fetchone()
        assert row is not None  # noqa: S101 - an upsert returns its row
        return row

    def rate_window_starts(self) -> dict[str, int]:
        """Starts in the sliding window now, per rate-limited queue."""
        with translate_errors():
            rows = execute_on(self.conn, QUEUES.rate_window_starts).fetchall()
        return {row[0]: int(row[1]) for row in rows}

    def task_limits(self) -> list[dict[str, Any]]:
        with translate_errors(), cursor_on(self.conn, row_factory=dict_row) as cur:
            return cur.execute(QUEUES.list_task_limits).fetchall()
