"""The scenarios. Each is a list of units; a unit runs once per repetition in a fresh database
and returns its samples. Keys match the peer benchmark's (``/work/shared/peer-bench``) where
the same thing is measured, so the figures line up column by column.
"""

from __future__ import annotations

import time

from pgqueue._bench import startup
from pgqueue._bench.context import FULL, Context, Scenario, Unit
from pgqueue._bench.guarantees import GUARANTEES
from pgqueue._bench.latency_load import LATENCY_LOAD
from pgqueue._bench.memory import MEMORY
from pgqueue._bench.physical import PHYSICAL
from pgqueue._bench.stats import Sample, percentile, rate, timed
from pgqueue._bench.steps import bench_app, count_label, drain, drain_limited, fill_paused, job_specs, set_paused
from pgqueue._bench.workers import ASYNC, QUEUE, SYNC, TASK, WorkerProcesses
from pgqueue._db.bench import bench_probe
from pgqueue._db.sessions import open_connection
from pgqueue.jobs import Job

# --- enqueue ---

def _enqueue_single(ctx: Context) -> list[Sample]:
    n = ctx.sizes.enqueue_single
    with ctx.databases.fresh() as dsn, open_connection(dsn, autocommit=True) as conn:
        app = bench_app(dsn)
        with timed() as watch:
            for i in range(n):
                app.enqueue(conn, TASK, {"i": i}, queue=QUEUE)
    return [Sample("enqueue_single", "jobs/s", rate(n, watch.seconds))]


def _enqueue_paths(ctx: Context) -> list[Sample]:
    """The other ways to enqueue one job, each on its own fresh database: a typed task, a typed
    task with per-call options, and the SQL function."""
    n = ctx.sizes.enqueue_single
    samples = []
    with ctx.databases.fresh() as dsn, open_connection(dsn, autocommit=True) as conn:
        app = bench_app(dsn)

        @app.task(name=TASK, queue=QUEUE)
        def handler(job: Job, i: int) -> None: ...

        with timed() as watch:
            for i in range(n):
                handler.enqueue(conn, i=i)
        samples.append(Sample("enqueue_single_typed", "jobs/s", rate(n, watch.seconds)))
    with ctx.databases.fresh() as dsn, open_connection(dsn, autocommit=True) as conn:
        app = bench_app(dsn)
        bound = app.task(name=TASK, queue=QUEUE)(handler.fn).options(priority="high", tags=["bench"])
        with timed() as watch:
            for i in range(n):
                bound.enqueue(conn, i=i)
        samples.append(Sample("enqueue_single_options", "jobs/s", rate(n, watch.seconds)))
    with ctx.databases.fresh() as dsn, bench_probe(dsn) as probe:
        with timed() as watch:
            for i in range(n):
                probe.enqueue_via_sql(TASK, f'{{"i": {i}}}', QUEUE)
        samples.append(Sample("enqueue_single_sql", "jobs/s", rate(n, watch.seconds)))
    return samples


def _enqueue_bulk(ctx: Context) -> list[Sample]:
    n, batch = ctx.sizes.enqueue_bulk, ctx.sizes.bulk_batch
    specs = job_specs(0, n)
    with ctx.databases.fresh() as dsn, open_connection(dsn) as conn:
        app = bench_app(dsn)
        with timed() as watch:
            for start in range(0, n, batch):
                app.enqueue_many(conn, specs[start:start + batch])
                conn.commit()
    return [Sample("enqueue_bulk", "jobs/s", rate(n, watch.seconds))]


# --- processing ---

# (processes, concurrency, handler). c10 lines up with the peers' process_c10.
PROCESS_VARIANTS: tuple[tuple[int, int, str], ...] = (
    (1, 1, ASYNC), (1, 10, ASYNC), (1, 50, ASYNC), (2, 50, ASYNC), (1, 50, SYNC))


def process_key(processes: int, concurrency: int, handler: str) -> str:
    key = f"process_p{processes}_c{concurrency}" if processes > 1 else f"process_c{concurrency}"
    return key + ("_sync" if handler == SYNC else "")


def _process_unit(processes: int, concurrency: int, handler: str) -> Unit:
    key = process_key(processes, concurrency, handler)

    def run(ctx: Context) -> list[Sample]:
        n = ctx.sizes.process
        with ctx.databases.fresh() as dsn:
            fill_paused(ctx, dsn, n)
            value, note = drain(ctx, dsn, processes=processes, concurrency=concurrency, target=n, handler=handler)
        return [Sample(key, "jobs/s", value, note)]

    return Unit(f"process P={processes} C={concurrency}{' sync' if handler == SYNC else ''}", run)


# --- latency ---

def _latency(ctx: Context) -> list[Sample]:
    n, gap = ctx.sizes.latency, ctx.sizes.latency_gap_s
    with ctx.databases.fresh() as dsn, WorkerProcesses(
            dsn, processes=1, concurrency=10, record_starts=True) as workers, \
            open_connection(dsn, autocommit=True) as conn:
        ctx.status("starting an idle worker")
        workers.wait_ready()
        time.sleep(0.5)  # idle: parked on LISTEN, nothing in flight
        ctx.status(f"enqueueing {n} jobs {gap * 1000:g} ms apart")
        app = bench_app(dsn)
        # From just before the COMMIT is sent. Taken after it returned, the worker (woken by the
        # commit's NOTIFY, and competing for the same cores) often started the handler first, and a
        # repetition's median came out negative.
        sent: list[float] = []
        next_at = time.monotonic()
        for i in range(n):
            with conn.transaction():
                app.enqueue(conn, TASK, {"i": i}, queue=QUEUE)
                sent.append(time.time())  # the block's end sends the COMMIT
            next_at += gap
            time.sleep(max(0.0, next_at - time.monotonic()))
        deadline = time.monotonic() + 10
        while len(workers.starts) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        starts = dict(workers.starts)
    latencies = [(starts[i] - at) * 1000 for i, at in enumerate(sent) if i in starts]
    missing = n - len(latencies)
    note = f"{missing} of {n} jobs did not start within 10 s" if missing else None
    return [Sample(f"latency_p{p}", "ms", percentile(latencies, p), note) for p in (50, 95, 99)]


# --- workflows ---

def _chain_latency(ctx: Context) -> list[Sample]:
    """A chain of N no-op steps on an idle worker: the ack of step n (its statement's now(), so
    the statement and its commit are included) -> start of step n+1; then the plain wake-up
    latency on the same worker, measured alike (before the enqueue statement -> start), for the
    ratio the issue asks for (within 2x)."""
    import pgqueue.workflows as wf

    n, gap = ctx.sizes.latency, ctx.sizes.latency_gap_s
    with ctx.databases.fresh() as dsn, WorkerProcesses(
            dsn, processes=1, concurrency=10, record_starts=True) as workers, \
            open_connection(dsn, autocommit=True) as conn, bench_probe(dsn) as probe:
        ctx.status("starting an idle worker")
        workers.wait_ready()
        time.sleep(0.5)
        app = bench_app(dsn)
        ctx.status(f"a chain of {n} steps")
        flow = wf.chain(*[wf.sig(TASK, {"i": i}, queue=QUEUE) for i in range(n)])
        ids = app.enqueue_workflow(conn, flow).job_ids
        deadline = time.monotonic() + 60
        while len(workers.starts) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the last ack
        finished = probe.finished_epochs(ids)
        chain_starts = dict(workers.starts)
        steps = [(chain_starts[i + 1] - finished[ids[i]]) * 1000 for i in range(n - 1)
                 if i + 1 in chain_starts and ids[i] in finished]
        workers.starts.clear()
        ctx.status(f"{n} plain jobs {gap * 1000:g} ms apart")
        commits: list[float] = []
        next_at = time.monotonic()
        for i in range(n):
            # From before the enqueue, as a step is measured from before its ack statement: both
            # include the statement and its commit that make the job runnable.
            commits.append(time.time())
            app.enqueue(conn, TASK, {"i": i}, queue=QUEUE)
            next_at += gap
            time.sleep(max(0.0, next_at - time.monotonic()))
        deadline = time.monotonic() + 10
        while len(workers.starts) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        plain_starts = dict(workers.starts)
    plain = [(plain_starts[i] - commit) * 1000 for i, commit in enumerate(commits) if i in plain_starts]
    missing = n - 1 - len(steps)
    note = f"{missing} of {n - 1} steps did not start within 60 s" if missing else None
    samples = [Sample(f"chain_step_p{p}", "ms", percentile(steps, p), note) for p in (50, 95, 99)]
    samples += [Sample(f"chain_plain_p{p}", "ms", percentile(plain, p)) for p in (50, 95)]
    plain50 = percentile(plain, 50)
    samples.append(Sample("chain_step_ratio_p50", "x", percentile(steps, 50) / plain50 if plain50 else float("nan")))
    return samples


def _group_enqueue(ctx: Context) -> list[Sample]:
    """A group of N members and a callback through App.enqueue_workflow vs enqueue_many of N plain
    jobs, each in one transaction on a fresh database."""
    import pgqueue.workflows as wf

    n = ctx.sizes.bulk_batch
    with ctx.databases.fresh() as dsn, open_connection(dsn) as conn:
        app = bench_app(dsn)
        with timed() as plain:
            app.enqueue_many(conn, job_specs(0, n))
            conn.commit()
    with ctx.databases.fresh() as dsn, open_connection(dsn) as conn:
        app = bench_app(dsn)
        flow = wf.group([wf.sig(TASK, {"i": i}, queue=QUEUE) for i in range(n)], then=wf.sig(TASK, queue=QUEUE))
        with timed() as grouped:
            app.enqueue_workflow(conn, flow)
            conn.commit()
    label = count_label(n)
    return [
        Sample(f"enqueue_many_{label}", "jobs/s", rate(n, plain.seconds)),
        Sample(f"group_enqueue_{label}", "jobs/s", rate(n + 1, grouped.seconds)),
        Sample(f"group_enqueue_{label}_cost", "x", grouped.seconds / plain.seconds if plain.seconds else float("nan")),
    ]


# --- backlog ---

def _backlog(ctx: Context) -> list[Sample]:
    measure = ctx.sizes.backlog_measure
    rates: list[float] = []
    samples: list[Sample] = []
    for size in ctx.sizes.backlogs:
        with ctx.databases.fresh() as dsn:
            with bench_probe(dsn) as probe:
                set_paused(probe, True)
                ctx.status(f"generating a backlog of {size:,} jobs")
                probe.fill_backlog(TASK, QUEUE, size)
            value, note = drain(ctx, dsn, processes=1, concurrency=50, target=measure)
        rates.append(value)
        samples.append(Sample(f"backlog_{count_label(size)}", "jobs/s", value, note))
    samples.append(Sample("backlog_ratio", "x", rates[1] / rates[0] if rates[0] else float("nan")))
    return samples


# --- flow limits ---

def _limits(ctx: Context) -> list[Sample]:
    """One large backlog drained by 1 process x 50: unlimited; limited to concurrency 10,000 (never
    binds: the difference is the locked claim's cost per job); limited to 50 (binds: finished
    jobs count as running until their outcome is written, so fewer are in flight); and
    rate-limited to 500/s (the achieved rate shows how closely the sliding window is used). The
    worker serves the queue by name: a worker of every queue would also walk the limited queue's
    backlog in its plain claim, as it does a paused queue's."""
    size, measure = ctx.sizes.backlogs[1], ctx.sizes.backlog_measure
    rate_limit = 500
    label = count_label(size)
    samples: list[Sample] = []
    with ctx.databases.fresh() as dsn:
        with bench_probe(dsn) as probe:
            set_paused(probe, True)
            ctx.status(f"generating a backlog of {size:,} jobs")
            probe.fill_backlog(TASK, QUEUE, size)
        figures: dict[str, float] = {}
        for key, concurrency, limit_rate, target in (
                (f"limits_unlimited_{label}", None, None, measure),
                (f"limits_c10000_{label}", 10_000, None, measure),
                (f"limits_c50_{label}", 50, None, measure),
                (f"limits_rate_{rate_limit}_s", None, (rate_limit, 1), rate_limit * 6)):
            value, note = drain_limited(ctx, dsn, concurrency_limit=concurrency, rate_limit=limit_rate,
                                        target=target)
            figures[key] = value
            if limit_rate is not None and note is None:
                # A sliding window lets the first N start at once: K jobs take at least K/N - 1 s.
                note = (f"{target:,} jobs at {rate_limit}/s: at most {target / (target / rate_limit - 1):,.0f} jobs/s "
                        "(the first window starts at once)")
            samples.append(Sample(key, "jobs/s", value, note))
    plain, locked = figures[f"limits_unlimited_{label}"], figures[f"limits_c10000_{label}"]
    overhead = (1 / locked - 1 / plain) * 1e6 if locked and plain else float("nan")
    samples.append(Sample("limits_claim_overhead", "us/job", overhead,
                          "claim of a limited queue (lock, count running) against the plain claim; limit not binding"))
    return samples


# --- churn ---

def _churn(ctx: Context) -> list[Sample]:
    """Jobs through the table with pgqueue's own retention: the worker's maintenance leader prunes
    completed jobs older than ``churn_keep_s`` every ``churn_prune_s`` and vacuums by its rule."""
    sizes = ctx.sizes
    n, wave = sizes.churn, sizes.churn_wave
    mb = 1024 * 1024
    with ctx.databases.fresh() as dsn:
        app = bench_app(dsn)
        half_bytes = 0
        with bench_probe(dsn) as probe, WorkerProcesses(
                dsn, processes=1, concurrency=50, retain_completed=sizes.churn_keep_s,
                prune_interval=sizes.churn_prune_s) as workers:
            ctx.status("starting a worker")
            workers.wait_ready()
            autovacuum = probe.autovacuum()
            deadline = time.monotonic() + sizes.churn_cap_s
            enqueued = done = 0
            with timed() as watch:
                while done < n and time.monotonic() < deadline:
                    # Jobs that left the queue: completed, whether still there or pruned already.
                    done = enqueued - probe.count_unfinished()
                    ctx.status(f"churn: {done:,} of {n:,} jobs done")
                    if not half_bytes and done >= n // 2:
                        half_bytes = probe.table_size("pgqueue.jobs")[0]
                    if enqueued < n and probe.count_available() < wave:
                        app.enqueue_many(probe.conn, job_specs(enqueued, min(wave, n - enqueued)))
                        enqueued += min(wave, n - enqueued)
                    else:
                        time.sleep(0.1)
        # The worker has disconnected, so its statistics are flushed.
        with bench_probe(dsn) as probe:
            ctx.status("churn: measuring table sizes")
            total, _, dead = probe.table_size("pgqueue.jobs")
            heap, indexes = probe.relation_sizes("pgqueue.jobs")
            vacuums = probe.vacuum_count()
            live = probe.count_jobs()
            fresh = probe.fresh_copy_bytes()
            events, _, _ = probe.table_size("pgqueue.job_events")
    note = (f"pgqueue's retention in the worker: completed jobs older than {sizes.churn_keep_s:g} s pruned every "
            f"{sizes.churn_prune_s:g} s by the maintenance leader; {n:,} jobs, 1 worker x 50")
    if not autovacuum:
        note += f"; autovacuum is off on this server, so the leader ran VACUUM pgqueue.jobs itself ({vacuums} times)"
    if done < n:
        note += f"; capped at {sizes.churn_cap_s:g} s after {done:,} jobs"
    return [
        Sample("churn_rate", "jobs/s", rate(done, watch.seconds), note),
        Sample("churn_table_mb", "MB", total / mb),
        Sample("churn_fresh_mb", "MB", fresh / mb),
        Sample("churn_bloat_ratio", "x", total / fresh if fresh else float("nan")),
        Sample("churn_growth", "x", total / half_bytes if half_bytes else float("nan")),
        Sample("churn_heap_mb", "MB", heap / mb),
        Sample("churn_indexes_mb", "MB", indexes / mb),
        Sample("churn_vacuums", "runs", vacuums),
        Sample("churn_live_rows", "rows", live),
        Sample("churn_dead_tuples", "rows", dead),
        Sample("churn_events_mb", "MB", events / mb),
    ]


SCENARIOS: dict[str, Scenario] = {
    s.name: s for s in (
        Scenario("enqueue-single", "App.enqueue, one job per transaction, 1 connection",
                 lambda sizes: [Unit("enqueue single", _enqueue_single)]),
        Scenario("enqueue-bulk", f"App.enqueue_many in batches of {FULL.bulk_batch:,}",
                 lambda sizes: [Unit("enqueue bulk", _enqueue_bulk)]),
        Scenario("enqueue-paths", "typed Task.enqueue, Task.options().enqueue and SELECT pgqueue.enqueue(), "
                 "one job per transaction", lambda sizes: [Unit("enqueue paths", _enqueue_paths)]),
        Scenario("process", "drain a backlog of no-op jobs with P processes x C concurrency",
                 lambda sizes: [_process_unit(*variant) for variant in PROCESS_VARIANTS]),
        Scenario("latency", "idle worker; COMMIT of the enqueue sent -> handler start",
                 lambda sizes: [Unit("latency", _latency)]),
        Scenario("chain", "a chain of no-op steps: commit of step n -> start of n+1, vs plain wake-up latency",
                 lambda sizes: [Unit("chain", _chain_latency)]),
        Scenario("group-enqueue", "enqueue a group of N jobs with a callback vs enqueue_many of N plain jobs",
                 lambda sizes: [Unit("group enqueue", _group_enqueue)]),
        Scenario("backlog", "claim+complete throughput with a small vs a large backlog",
                 lambda sizes: [Unit("backlog", _backlog)]),
        Scenario("limits", "a large backlog unlimited, then limited to concurrency 50, then rate-limited",
                 lambda sizes: [Unit("limits", _limits)]),
        Scenario("churn", "many jobs through the table with retention on: size and dead tuples",
                 lambda sizes: [Unit("churn", _churn)]),
        Scenario("startup", "pgqueue worker (1 process, and --processes 2): spawn -> worker start -> first job",
                 lambda sizes: startup.UNITS),
        Scenario("physical", "PostgreSQL's ceiling: the minimal SQL a queue needs per job",
                 lambda sizes: PHYSICAL),
        Scenario("latency-load", "wake-up latency of a lone high-priority job while the worker drains a backlog",
                 lambda sizes: LATENCY_LOAD),
        Scenario("guarantees", "throughput with encryption, a concurrency limit, a rate limit, against plain",
                 lambda sizes: GUARANTEES),
        Scenario("memory", "worker RSS through a large backlog and with 50 jobs running",
                 lambda sizes: MEMORY),
    )
}
