"""The benchmark's database side (``bench.sql``, ``ceiling.sql``): its probes on pgqueue's tables
and the ceiling's bare table. What is measured and timed is ``pgqueue._bench``'s business."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pgqueue._db.errors import translate_errors
from pgqueue._db.queries import load_queries
from pgqueue._db.queues import QueueStore
from pgqueue._db.sessions import open_connection


class BenchQueries(NamedTuple):
    count_completed: LiteralString
    count_available: LiteralString
    count_running: LiteralString
    count_encrypted_completed: LiteralString
    count_unfinished: LiteralString
    count_jobs: LiteralString
    nth_finished_at: LiteralString
    clock: LiteralString
    live_workers: LiteralString
    fill_backlog: LiteralString
    analyze_jobs: LiteralString
    vacuum_count: LiteralString
    autovacuum: LiteralString
    relation_sizes: LiteralString
    table_size: LiteralString
    jobs_reloptions: LiteralString
    create_fresh: LiteralString
    load_fresh: LiteralString
    drop_fresh: LiteralString
    server_settings: LiteralString
    enqueue_via_sql: LiteralString
    finished_epochs: LiteralString


class CeilingQueries(NamedTuple):
    create_table: LiteralString
    insert_job: LiteralString
    copy_jobs: LiteralString
    vacuum_table: LiteralString
    claim_job: LiteralString
    claim_jobs: LiteralString
    complete_job: LiteralString
    complete_jobs: LiteralString


BENCH = load_queries(BenchQueries, "bench.sql")
CEILING = load_queries(CeilingQueries, "ceiling.sql")
_FRESH_TABLE = sql.Identifier("public", "pgqueue_bench_fresh")


class BenchProbe:
    """The benchmark's own autocommit session on a scratch database: counts, sizes, the clock.

    ``conn`` is also the connection the benchmark enqueues on (``App.enqueue(probe.conn, ...)``).
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def _scalar(self, query: LiteralString, params: dict[str, Any] | None = None) -> Any:
        row = self.conn.execute(query, params).fetchone()
        return row[0] if row else None

    def clock(self) -> datetime:
        """The database's clock now (``clock_timestamp()``, not the transaction's start)."""
        value: datetime = self._scalar(BENCH.clock)
        return value

    def count_completed(self) -> int:
        return int(self._scalar(BENCH.count_completed))

    def count_available(self) -> int:
        return int(self._scalar(BENCH.count_available))

    def count_running(self) -> int:
        return int(self._scalar(BENCH.count_running))

    def count_encrypted_completed(self) -> int:
        return int(self._scalar(BENCH.count_encrypted_completed))

    def count_unfinished(self) -> int:
        return int(self._scalar(BENCH.count_unfinished))

    def count_jobs(self) -> int:
        return int(self._scalar(BENCH.count_jobs))

    def live_workers(self) -> int:
        return int(self._scalar(BENCH.live_workers))

    def nth_finished_at(self, n: int) -> datetime:
        value: datetime = self._scalar(BENCH.nth_finished_at, {"n": n})
        return value

    def finished_epochs(self, ids: list[int]) -> dict[int, float]:
        with translate_errors():
            rows = self.conn.execute(BENCH.finished_epochs, {"ids": ids}).fetchall()
        return {int(r[0]): float(r[1]) for r in rows if r[1] is not None}

    def autovacuum(self) -> bool:
        return bool(self._scalar(BENCH.autovacuum) == "on")

    def vacuum_count(self) -> int:
        return int(self._scalar(BENCH.vacuum_count))

    def enqueue_via_sql(self, task: str, args_json: str, queue: str) -> int:
        return int(self._scalar(BENCH.enqueue_via_sql, {"task": task, "args": args_json, "queue": queue}))

    def set_queue_paused(self, queue: str, paused: bool, actor: str) -> None:
        QueueStore(self.conn).set_queue_paused(queue, paused, actor=actor)

    def set_queue_limits(self, queue: str, *, concurrency: int | None, rate: tuple[int, int] | None,
                         actor: str) -> None:
        QueueStore(self.conn).set_limits(queue, concurrency=concurrency, set_concurrency=True, rate=rate,
                                         set_rate=True, actor=actor)

    def fill_backlog(self, task: str, queue: str, count: int) -> None:
        """``count`` available jobs generated server-side, then the table vacuumed and analysed."""
        self.conn.execute(BENCH.fill_backlog, {"task": task, "queue": queue, "count": count})
        self.conn.execute(BENCH.analyze_jobs)

    def vacuum_analyze_jobs(self) -> None:
        self.conn.execute(BENCH.analyze_jobs)

    def table_size(self, table: str) -> tuple[int, int, int]:
        """(total bytes, live rows estimated, dead tuples) of ``table``."""
        total, live, dead = self.conn.execute(BENCH.table_size, {"table": table}).fetchall()[0]
        return int(total), int(live), int(dead)

    def relation_sizes(self, table: str) -> tuple[int, int]:
        """(heap, all indexes) of ``table``, main forks only: which of them bloats."""
        heap, indexes = self.conn.execute(BENCH.relation_sizes, {"table": table}).fetchall()[0]
        return int(heap), int(indexes)

    def fresh_copy_bytes(self) -> int:
        """The size of the same live rows loaded into a new table with the same indexes and storage."""
        self.conn.execute(BENCH.create_fresh)
        for option in self._scalar(BENCH.jobs_reloptions):
            name, _, value = option.partition("=")
            self.conn.execute(sql.SQL("ALTER TABLE {} SET ({} = {})").format(
                _FRESH_TABLE, sql.Identifier(name), sql.Literal(value)))
        self.conn.execute(BENCH.load_fresh)
        total, _, _ = self.table_size("public.pgqueue_bench_fresh")
        self.conn.execute(BENCH.drop_fresh)
        return total


@contextlib.contextmanager
def bench_probe(dsn: str) -> Iterator[BenchProbe]:
    with open_connection(dsn, autocommit=True) as conn:
        yield BenchProbe(conn)


def server_settings(dsn: str) -> dict[str, str]:
    """The settings that shape the figures (version, shared_buffers, synchronous_commit...)."""
    with open_connection(dsn, autocommit=True) as conn:
        rows = conn.execute(BENCH.server_settings).fetchall()
    return {str(name): str(value) for name, value in rows}


class Ceiling:
    """A session on the ceiling's bare table (``public.ceiling_jobs``)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def create_table(self) -> None:
        self.conn.execute(CEILING.create_table)

    def insert_job(self, i: int) -> None:
        self.conn.execute(CEILING.insert_job, {"args": Jsonb({"i": i})})

    def copy_jobs(self, count: int) -> None:
        with self.conn.cursor() as cur, cur.copy(CEILING.copy_jobs) as copy:
            for i in range(count):
                copy.write_row(("available", f'{{"i": {i}}}'))

    def commit(self) -> None:
        self.conn.commit()

    def vacuum(self) -> None:
        self.conn.execute(CEILING.vacuum_table)

    def claim_and_complete(self, batch: int) -> int:
        """One claim transaction and one completion transaction; the number of jobs they handled."""
        if batch == 1:
            row = self.conn.execute(CEILING.claim_job).fetchone()
            if row is None:
                return 0
            self.conn.execute(CEILING.complete_job, {"id": row[0]})
            return 1
        ids = [row[0] for row in self.conn.execute(CEILING.claim_jobs, {"limit": batch}).fetchall()]
        if ids:
            self.conn.execute(CEILING.complete_jobs, {"ids": ids})
        return len(ids)


@contextlib.contextmanager
def ceiling_session(dsn: str, *, autocommit: bool) -> Iterator[Ceiling]:
    with open_connection(dsn, autocommit=autocommit) as conn:
        yield Ceiling(conn)
