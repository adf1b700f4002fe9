"""The worker fleet (``workers.sql``): the registry and its leases, the maintenance leader's lease,
and what that leader does for the fleet (stage due jobs, rescue the jobs of dead workers, forget
workers long dead). Sync only: the worker's heartbeat and maintenance threads run these."""

from __future__ import annotations

from datetime import datetime
from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg.rows import dict_row

from pgqueue._db.cursors import cursor_on, execute_on
from pgqueue._db.errors import translate_errors
from pgqueue._db.notifications import DONE_CHANNEL, NOTIFY_CHANNEL
from pgqueue._db.queries import load_queries


class WorkerQueries(NamedTuple):
    heartbeat_worker: LiteralString
    deregister_worker: LiteralString
    delete_expired_workers: LiteralString
    list_workers: LiteralString
    acquire_leadership: LiteralString
    resign_leadership: LiteralString
    stage_jobs: LiteralString
    rescue_jobs: LiteralString
    count_live_workers: LiteralString


WORKERS = load_queries(WorkerQueries, "workers.sql")


class WorkerStore:
    """Fleet statements on one psycopg connection; transactions are the caller's."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def heartbeat_worker(self, worker: dict[str, Any]) -> None:
        """Register ``worker`` (id, hostname, pid, queues, concurrency, lease_seconds) or renew its lease."""
        with translate_errors():
            execute_on(self.conn, WORKERS.heartbeat_worker, worker)

    def deregister_worker(self, worker_id: str) -> None:
        with translate_errors():
            execute_on(self.conn, WORKERS.deregister_worker, {"id": worker_id})

    def list_workers(self) -> list[dict[str, Any]]:
        with translate_errors(), cursor_on(self.conn, row_factory=dict_row) as cur:
            cur.execute(WORKERS.list_workers)
            return cur.fetchall()

    def count_live_workers(self) -> tuple[int, int]:
        """(alive, registered) worker processes."""
        with translate_errors():
            row = execute_on(self.conn, WORKERS.count_live_workers).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def acquire_leadership(self, name: str, holder: str, ttl_seconds: float) -> bool:
        with translate_errors():
            row = execute_on(self.conn, WORKERS.acquire_leadership,
                             {"name": name, "holder": holder, "ttl_seconds": ttl_seconds}).fetchone()
        return row is not None

    def resign_leadership(self, name: str, holder: str) -> None:
        with translate_errors():
            execute_on(self.conn, WORKERS.resign_leadership, {"name": name, "holder": holder})

    def stage_jobs(self, limit: int = 1000) -> int:
        """Make up to ``limit`` due scheduled jobs available; returns how many."""
        with translate_errors():
            row = execute_on(self.conn, WORKERS.stage_jobs, {"limit": limit, "channel": NOTIFY_CHANNEL}).fetchone()
        return int(row[0]) if row else 0

    def rescue_jobs(self, limit: int = 1000, recovered_at: datetime | None = None) -> list[tuple[int, str]]:
        """Hand back up to ``limit`` running jobs of dead workers; (job id, new state) of each.

        ``recovered_at``: when (server clock) the caller's session came back from an outage; leases
        hold for their full length after it, as after a server restart or promotion.
        """
        with translate_errors():
            rows = execute_on(self.conn, WORKERS.rescue_jobs, {"limit": limit, "channel": NOTIFY_CHANNEL,
                                                           "done_channel": DONE_CHANNEL,
                                                           "recovered_at": recovered_at}).fetchall()
        return [(r[0], r[1]) for r in rows]

    def delete_expired_workers(self, keep_seconds: float) -> int:
        with translate_errors():
            return execute_on(self.conn, WORKERS.delete_expired_workers, {"keep_seconds": keep_seconds}).rowcount
