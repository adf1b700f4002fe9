"""Circuit breakers (``breakers.sql``): the worker's configuration upsert and half-open trial claim
(async), and the operator's listing and reset (sync). Failure counting lives in the ack
statements of ``jobs.sql``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg.rows import dict_row

from pgqueue._db.cursors import async_execute_on, cursor_on, execute_on
from pgqueue._db.errors import translate_errors
from pgqueue._db.jobs import _job_from_row
from pgqueue._db.queries import load_queries
from pgqueue.jobs import Job


class BreakerQueries(NamedTuple):
    upsert_breakers: LiteralString
    remove_breakers: LiteralString
    find_due_breakers: LiteralString
    list_breakers: LiteralString
    reset_breaker: LiteralString
    lock_breakers_for_trial: LiteralString
    claim_breaker_trial: LiteralString


BREAKERS = load_queries(BreakerQueries, "breakers.sql")

#: (task, failures, window seconds, cooldown seconds)
BreakerConfig = tuple[str, int, float, float]


class BreakerStore:
    """Operator statements on one psycopg connection; transactions are the caller's."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def list_breakers(self) -> list[dict[str, Any]]:
        with translate_errors(), cursor_on(self.conn, row_factory=dict_row) as cur:
            cur.execute(BREAKERS.list_breakers)
            return cur.fetchall()

    def reset_breaker(self, task: str, actor: str | None, source: str | None = None) -> str | None:
        """Close ``task``'s breaker; its state before, or None when the task has no breaker."""
        with translate_errors():
            row = execute_on(self.conn, BREAKERS.reset_breaker,
                             {"task": task, "actor": actor, "source": source}).fetchone()
        return None if row is None else str(row[0])


class AsyncBreakerStore:
    """The worker's statements, on its claim session."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def upsert_breakers(self, configs: Sequence[BreakerConfig]) -> None:
        with translate_errors():
            await async_execute_on(self.conn, BREAKERS.upsert_breakers, {
                "tasks": [c[0] for c in configs], "failures": [c[1] for c in configs],
                "windows": [float(c[2]) for c in configs], "cooldowns": [float(c[3]) for c in configs]})

    async def remove_breakers(self, tasks: Sequence[str], worker_id: str) -> list[str]:
        """Delete the breakers of ``tasks`` (declared without one now); the tasks that had one."""
        with translate_errors():
            cur = await async_execute_on(self.conn, BREAKERS.remove_breakers,
                                         {"tasks": list(tasks), "worker_id": worker_id})
            rows = await cur.fetchall()
        return [str(r[0]) for r in rows]

    async def find_due_breakers(self, tasks: Sequence[str]) -> list[str]:
        with translate_errors():
            cur = await async_execute_on(self.conn, BREAKERS.find_due_breakers, {"tasks": list(tasks)})
            rows = await cur.fetchall()
        return [str(r[0]) for r in rows]

    async def claim_breaker_trial(self, tasks: Sequence[str], queues: Sequence[str] | None,
                                  worker_id: str) -> Job | None:
        token = str(uuid.uuid4())
        # Two statements in one transaction: the breakers are locked first, so the claim's snapshot,
        # taken after, holds every change to them (see lock_breakers_for_trial).
        # Only the breakers locked here are tried: one another claimer held was skipped by the lock,
        # and may turn half-open between the claim's snapshot and its own lock, the race again.
        with translate_errors():
            async with self.conn.transaction():
                cur = await async_execute_on(self.conn, BREAKERS.lock_breakers_for_trial, {"tasks": list(tasks)})
                locked = [str(r[0]) for r in await cur.fetchall()]
                if not locked:
                    return None
                cur = await async_execute_on(self.conn, BREAKERS.claim_breaker_trial, {
                    "tasks": locked, "queues": list(queues) if queues else None, "worker_id": worker_id,
                    "lease_token": token})
                row = await cur.fetchone()
        return None if row is None else _job_from_row(row, token)
