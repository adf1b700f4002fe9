"""Steps the scenarios share: the benchmark's App, job specs, a paused prefill, and a timed drain
by real worker processes (with or without flow limits on the queue)."""

from __future__ import annotations

import time
from datetime import datetime

from pgqueue._bench.context import Context
from pgqueue._bench.stats import rate
from pgqueue._bench.workers import ASYNC, QUEUE, TASK, WorkerProcesses
from pgqueue._db.bench import BenchProbe, bench_probe
from pgqueue.app import App
from pgqueue.jobs import JobSpec
from pgqueue.settings import Settings

ACTOR = "pgqueue-bench"


def count_label(n: int) -> str:
    """10_000 -> "10k", 1_000_000 -> "1m": the size suffix of a key."""
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


def bench_app(dsn: str, settings: Settings | None = None) -> App:
    return App(dsn, settings=settings or Settings(dsn=dsn))


def job_specs(start: int, count: int) -> list[JobSpec]:
    return [JobSpec(TASK, {"i": i}, queue=QUEUE) for i in range(start, start + count)]


def set_paused(probe: BenchProbe, paused: bool) -> None:
    probe.set_queue_paused(QUEUE, paused, actor=ACTOR)


def fill_paused(ctx: Context, dsn: str, count: int, app: App | None = None, *, analyze: bool = False) -> None:
    """``count`` jobs through ``enqueue_many`` (its COPY path) on a paused queue, so no worker
    starts early; ``app`` decides how they are written (e.g. encrypted).

    ``analyze`` runs VACUUM ANALYZE on the jobs afterwards, as autovacuum would soon after such an
    insert: on a server with autovacuum off, the claim is otherwise planned without statistics
    for the new rows (measured: the plain claim then drains 1 x 10 at about half the rate).
    """
    ctx.status(f"enqueueing {count:,} jobs")
    app = app or bench_app(dsn)
    with bench_probe(dsn) as probe:
        set_paused(probe, True)
        for start in range(0, count, ctx.sizes.bulk_batch):
            app.enqueue_many(probe.conn, job_specs(start, min(ctx.sizes.bulk_batch, count - start)))
        if analyze:
            probe.vacuum_analyze_jobs()


def seconds_between(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds()


def drain(ctx: Context, dsn: str, *, processes: int, concurrency: int, target: int,
          handler: str = ASYNC, already: int = 0, queues: tuple[str, ...] = (),
          encryption_key: str | None = None) -> tuple[float, str | None]:
    """Start workers on the paused queue, resume it, and time ``target`` completions.

    Start and end come from the database clock: the moment before the queue resumes, and the
    ``finished_at`` of the target-th completed job. Polling only decides when to look.
    """
    cap = ctx.sizes.process_cap_s
    with bench_probe(dsn) as probe, WorkerProcesses(
            dsn, processes=processes, concurrency=concurrency, handler=handler, queues=queues,
            encryption_key=encryption_key) as workers:
        ctx.status(f"starting {processes} worker process(es)")
        workers.wait_ready()
        ctx.status(f"draining {target:,} jobs with {processes} x {concurrency}")
        started: datetime = probe.clock()
        set_paused(probe, False)
        deadline = time.monotonic() + cap
        done = probe.count_completed() - already
        while done < target and time.monotonic() < deadline:
            time.sleep(0.05)
            done = probe.count_completed() - already
        if done >= target:
            return rate(target, seconds_between(started, probe.nth_finished_at(already + target))), None
        elapsed = seconds_between(started, probe.clock())
        return rate(done, elapsed), f"capped at {cap:g} s: {done} of {target} jobs; rate = jobs handled / elapsed"


def drain_limited(ctx: Context, dsn: str, *, concurrency_limit: int | None, rate_limit: tuple[int, int] | None,
                  target: int, processes: int = 1, concurrency: int = 50,
                  encryption_key: str | None = None) -> tuple[float, str | None]:
    """Set (or clear) the queue's limits while it is paused, then time ``target`` more completions.

    The workers serve the queue by name: a worker of every queue would also walk a limited
    queue's backlog in its plain claim, as it does a paused queue's.
    """
    with bench_probe(dsn) as probe:
        set_paused(probe, True)
        probe.set_queue_limits(QUEUE, concurrency=concurrency_limit, rate=rate_limit, actor=ACTOR)
        done = probe.count_completed()
    return drain(ctx, dsn, processes=processes, concurrency=concurrency, target=target, already=done,
                 queues=(QUEUE,), encryption_key=encryption_key)
