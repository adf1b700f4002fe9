"""Queues (``queues.sql``): pause and resume, and per-queue figures. Sync only (the CLI, the demo)."""

from __future__ import annotations

from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg.rows import dict_row

from pgqueue._db.errors import translate_errors
from pgqueue._db.notifications import NOTIFY_CHANNEL
from pgqueue._db.queries import load_queries


class QueueQueries(NamedTuple):
    set_queue_paused: LiteralString
    queue_stats: LiteralString
    summarize_queues: LiteralString


QUEUES = load_queries(QueueQueries, "queues.sql")


class QueueStore:
    """Queue statements on one psycopg connection; transactions are the caller's."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def set_queue_paused(self, queue: str, paused: bool, actor: str | None) -> None:
        """Pause or resume ``queue`` (resuming wakes idle workers); writes the audit row."""
        with translate_errors():
            self.conn.execute(QUEUES.set_queue_paused,
                              {"queue": queue, "paused": paused, "actor": actor, "channel": NOTIFY_CHANNEL})

    def queue_stats(self) -> list[dict[str, Any]]:
        with translate_errors(), self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(QUEUES.queue_stats)
            return cur.fetchall()

    def summarize_queues(self) -> list[dict[str, Any]]:
        with translate_errors(), self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(QUEUES.summarize_queues)
            return cur.fetchall()
