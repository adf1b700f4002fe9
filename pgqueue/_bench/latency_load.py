"""``latency-load``: the wake-up latency of a lone high-priority job while the same worker drains a
backlog of no-op jobs at full speed.

One worker process serves a paused backlog of ``load_backlog`` no-ops; once the queue is resumed
and the worker runs flat out, a producer enqueues a probe job every ``load_gap_s`` at priority 0
("critical": a smaller number runs first) against the backlog's default 100. Latency is the
producer's ``time.monotonic()`` right after the enqueue committed to the probe handler's
``time.monotonic()`` at its start: CLOCK_MONOTONIC, one clock for every process of the machine.
The backlog's rate over the same window shows what the worker was doing meanwhile.
"""

from __future__ import annotations

import time

from pgqueue._bench.context import Context, Unit
from pgqueue._bench.stats import Sample, percentile, rate
from pgqueue._bench.steps import fill_paused, set_paused
from pgqueue._bench.workers import PROBE_TASK, QUEUE, WorkerProcesses
from pgqueue._db.bench import bench_probe
from pgqueue._db.sessions import open_connection
from pgqueue.app import App
from pgqueue.settings import Settings

#: Worker settings measured: the default concurrency, and one process's best (the process scenario's).
CONCURRENCIES = (10, 50)
PROBE_PRIORITY = 0
# Time for the worker to reach full speed after the queue resumes, before the first probe.
_WARM_UP_S = 0.5
_LATE_S = 10.0


def _latency_load_unit(concurrency: int) -> Unit:
    prefix = f"latency_load_c{concurrency}"

    def run(ctx: Context) -> list[Sample]:
        sizes = ctx.sizes
        n, gap = sizes.load_probes, sizes.load_gap_s
        with ctx.databases.fresh() as dsn:
            fill_paused(ctx, dsn, sizes.load_backlog, analyze=True)
            app = App(dsn, settings=Settings(dsn=dsn))
            with bench_probe(dsn) as probe, WorkerProcesses(
                    dsn, processes=1, concurrency=concurrency, record_probes=True) as workers, \
                    open_connection(dsn, autocommit=True) as conn:
                ctx.status(f"starting a worker x {concurrency}")
                workers.wait_ready()
                set_paused(probe, False)
                time.sleep(_WARM_UP_S)
                ctx.status(f"{n} probes {gap * 1000:g} ms apart while the backlog drains")
                done_before, started = probe.count_completed(), time.monotonic()
                commits: list[float] = []
                next_at = started
                for i in range(n):
                    app.enqueue(conn, PROBE_TASK, {"i": i}, queue=QUEUE, priority=PROBE_PRIORITY)
                    commits.append(time.monotonic())
                    next_at += gap
                    time.sleep(max(0.0, next_at - time.monotonic()))
                done_after, ended = probe.count_completed(), time.monotonic()
                left = probe.count_available()
                deadline = time.monotonic() + _LATE_S
                while len(workers.starts) < n and time.monotonic() < deadline:
                    time.sleep(0.05)
                starts = dict(workers.starts)
        latencies = [(starts[i] - commit) * 1000 for i, commit in enumerate(commits) if i in starts]
        notes = [f"1 worker x {concurrency}; {n} probes at priority {PROBE_PRIORITY} every {gap * 1000:g} ms "
                 f"against {sizes.load_backlog:,} no-ops at the default 100"]
        if missing := n - len(latencies):
            notes.append(f"{missing} of {n} probes did not start within {_LATE_S:g} s")
        if left == 0:
            notes.append("the backlog ran out before the last probe: enlarge load_backlog")
        note = "; ".join(notes)
        probes_done = len([s for s in starts.values() if s <= ended])
        backlog_rate = rate(done_after - done_before - probes_done, ended - started)
        return [Sample(f"{prefix}_p{p}", "ms", percentile(latencies, p), note if p == 50 else None)
                for p in (50, 95, 99)] + [Sample(f"{prefix}_backlog_rate", "jobs/s", backlog_rate)]

    return Unit(f"latency under load, 1 x {concurrency}", run)


LATENCY_LOAD: list[Unit] = [_latency_load_unit(c) for c in CONCURRENCIES]
