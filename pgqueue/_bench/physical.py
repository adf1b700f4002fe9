"""PostgreSQL's ceiling on this machine: the least SQL any queue must run per job, through psycopg
(``pgqueue._db.bench.Ceiling``).

A bare table with a partial claim index; INSERT per job (autocommit) and one COPY for bulk; a
claim (``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1)``, or ``= ANY`` of
100) and a completing UPDATE, each its own transaction, on 1 and 4 connections. No audit rows,
no leases, no NOTIFY: whatever pgqueue does beyond this is what its figures pay for.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pgqueue._bench.context import Context, Unit
from pgqueue._bench.stats import Sample, rate, timed
from pgqueue._db.bench import ceiling_session

_CLAIM_BATCH = 100


@contextmanager
def _ceiling_database(ctx: Context) -> Iterator[str]:
    with ctx.databases.fresh() as dsn:
        with ceiling_session(dsn, autocommit=True) as ceiling:
            ceiling.create_table()
        yield dsn


def _insert_single(ctx: Context) -> list[Sample]:
    n = ctx.sizes.physical_single
    with _ceiling_database(ctx) as dsn, ceiling_session(dsn, autocommit=True) as ceiling, timed() as watch:
        for i in range(n):
            ceiling.insert_job(i)
    return [Sample("physical_enqueue_single", "jobs/s", rate(n, watch.seconds))]


def _copy_bulk(ctx: Context) -> list[Sample]:
    n = ctx.sizes.physical_batch
    with _ceiling_database(ctx) as dsn, ceiling_session(dsn, autocommit=False) as ceiling, timed() as watch:
        ceiling.copy_jobs(n)
        ceiling.commit()
    return [Sample("physical_enqueue_bulk", "jobs/s", rate(n, watch.seconds))]


def _claim_unit(batch: int, connections: int) -> Unit:
    key = f"physical_claim{batch}_conn{connections}"

    def run(ctx: Context) -> list[Sample]:
        n = ctx.sizes.physical_single if batch == 1 else ctx.sizes.physical_batch
        handled = [0] * connections
        errors: list[BaseException] = []
        with _ceiling_database(ctx) as dsn:
            with ceiling_session(dsn, autocommit=False) as ceiling:
                ceiling.copy_jobs(n)
            with ceiling_session(dsn, autocommit=True) as ceiling:
                ceiling.vacuum()
            # Everyone connects first; the clock starts when all are ready.
            ready = threading.Barrier(connections + 1)
            deadline = time.monotonic() + 300

            def drain(index: int) -> None:
                try:
                    with ceiling_session(dsn, autocommit=True) as ceiling:
                        ready.wait()
                        while time.monotonic() < deadline and (got := ceiling.claim_and_complete(batch)):
                            handled[index] += got
                # Handed to the caller's thread, which re-raises it after the join.
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)
                    ready.abort()

            threads = [threading.Thread(target=drain, args=(i,), name=f"ceiling-{i}") for i in range(connections)]
            for thread in threads:
                thread.start()
            with contextlib.suppress(threading.BrokenBarrierError):
                ready.wait()
            with timed() as watch:
                for thread in threads:
                    thread.join()
        if errors:
            raise errors[0]
        return [Sample(key, "jobs/s", rate(sum(handled), watch.seconds))]

    return Unit(f"physical claim {batch}/tx, {connections} conn", run)


PHYSICAL: list[Unit] = [
    Unit("physical insert 1/tx", _insert_single),
    Unit("physical COPY", _copy_bulk),
    _claim_unit(1, 1),
    _claim_unit(1, 4),
    _claim_unit(_CLAIM_BATCH, 1),
    _claim_unit(_CLAIM_BATCH, 4),
]
