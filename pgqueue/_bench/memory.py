"""``memory``: the worker process's resident memory while it works through a large backlog, and
while it holds 50 running jobs.

RSS is ``VmRSS`` from ``/proc/<pid>/status`` of the worker process (the bench child runs the
Worker itself), sampled every half second from the benchmark's side. Start is the idle worker's,
registered and ready; growth is the end against the first sample after the first quarter of the
measured window (warm-up: imports, prepared statements, pools and buffers filled). "Flat" means a
growth of a few MB at most.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pgqueue._bench.context import Context, Unit
from pgqueue._bench.stats import Sample, rate
from pgqueue._bench.steps import bench_app, count_label, fill_paused, set_paused
from pgqueue._bench.workers import QUEUE, SLEEP_TASK, WorkerProcesses
from pgqueue._db.bench import BenchProbe, bench_probe
from pgqueue.errors import PgqueueError
from pgqueue.jobs import JobSpec

#: How often the backlog unit reads how many jobs are claimed and not acknowledged.
_RUNNING_POLL_S = 0.1
_INTERVAL_S = 0.5
_RUNNING = 50
_MB = 1024 * 1024
# Claimed-but-unacknowledged jobs beyond this many times the slots: the acks are not keeping up
# (a claim batch or two ahead, and one ack batch in flight, stay far below it).
_ACK_LAG_FACTOR = 20


def read_rss(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes, or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


@dataclass
class RssSampler:
    """Samples ``pid``'s RSS every ``interval`` seconds on a thread, while marked windows are open."""

    pid: int
    interval: float = _INTERVAL_S
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        if read_rss(self.pid) is None:
            raise PgqueueError(f"the memory scenario reads /proc/{self.pid}/status (Linux), which is not there")
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self) -> None:
        if (rss := read_rss(self.pid)) is not None:
            self.samples.append((time.monotonic(), rss))

    def since(self, started: float) -> list[tuple[float, int]]:
        return [(t, rss) for t, rss in self.samples if t >= started]


def _rss_samples(prefix: str, idle: int, window: list[tuple[float, int]], note: str) -> list[Sample]:
    """Start (idle), max, end and the growth once warmed up, in MB."""
    if not window:
        nan = float("nan")
        return [Sample(f"{prefix}_rss_{k}_mb", "MB", nan, note) for k in ("start", "max", "end")] + [
            Sample(f"{prefix}_growth_mb", "MB", nan)]
    first, last = window[0][0], window[-1][0]
    warm = next(rss for t, rss in window if t >= first + (last - first) / 4)
    end = window[-1][1]
    return [
        Sample(f"{prefix}_rss_start_mb", "MB", idle / _MB, note),
        Sample(f"{prefix}_rss_max_mb", "MB", max(idle, *(rss for _, rss in window)) / _MB),
        Sample(f"{prefix}_rss_end_mb", "MB", end / _MB),
        Sample(f"{prefix}_growth_mb", "MB", (end - warm) / _MB),
    ]


@contextmanager
def _watched_worker(ctx: Context, dsn: str) -> Iterator[tuple[BenchProbe, RssSampler, int]]:
    """A ready worker x 50 whose RSS is sampled from now on, with the benchmark's probe and the
    idle worker's RSS."""
    with bench_probe(dsn) as probe, WorkerProcesses(dsn, processes=1, concurrency=_RUNNING) as workers:
        ctx.status(f"starting a worker x {_RUNNING}")
        workers.wait_ready()
        with RssSampler(workers.pids[0]) as sampler:
            sampler.sample()
            yield probe, sampler, sampler.samples[-1][1]


def _backlog(ctx: Context) -> list[Sample]:
    """A backlog of ``memory_backlog`` no-ops (``enqueue_many``'s COPY path, on a paused queue),
    worked through by 1 worker x 50 until it is empty or ``memory_cap_s`` has passed."""
    n, cap = ctx.sizes.memory_backlog, ctx.sizes.memory_cap_s
    prefix = f"memory_backlog_{count_label(n)}"
    with ctx.databases.fresh() as dsn:
        fill_paused(ctx, dsn, n, analyze=True)
        with _watched_worker(ctx, dsn) as (probe, sampler, idle):
            set_paused(probe, False)
            started = time.monotonic()
            deadline = started + cap
            done = peak = 0
            counted = started
            while done < n and time.monotonic() < deadline:
                time.sleep(_RUNNING_POLL_S)
                # Claimed and not acknowledged yet: above the worker's 50 slots, finished jobs'
                # outcomes are waiting in the worker for their ack (held in its memory). Read
                # often (the running rows' own index): a small backlog drains within a second.
                running = probe.count_running()
                peak = max(peak, running)
                # Counting a million completed rows is work for the server too: once a second,
                # or when nothing runs (the backlog may be done).
                if running == 0 or time.monotonic() - counted >= 1.0:
                    done = probe.count_completed()
                    counted = time.monotonic()
                    ctx.status(f"memory: {done:,} of {n:,} jobs done")
            elapsed = time.monotonic() - started
            sampler.sample()
            window = sampler.since(started)
    note = f"1 worker x {_RUNNING} working through {n:,} waiting jobs; RSS every {_INTERVAL_S:g} s"
    if done < n:
        note += f"; capped at {cap:g} s after {done:,} jobs"
    if peak > _ACK_LAG_FACTOR * _RUNNING:
        note += (f"; acks fell behind: {peak:,} jobs claimed and not acknowledged at the peak, against "
                 f"{_RUNNING} slots (their outcomes wait in the worker's memory)")
    return [*_rss_samples(prefix, idle, window, note), Sample(f"{prefix}_rate", "jobs/s", rate(done, elapsed)),
            Sample(f"{prefix}_peak_running", "jobs", peak)]


def _running(ctx: Context) -> list[Sample]:
    """50 jobs whose handlers sleep ``memory_hold_s``, all running at once on 1 worker x 50."""
    hold = ctx.sizes.memory_hold_s
    prefix = f"memory_running{_RUNNING}"
    with ctx.databases.fresh() as dsn:
        app = bench_app(dsn)
        with _watched_worker(ctx, dsn) as (probe, sampler, idle):
            app.enqueue_many(probe.conn, [JobSpec(SLEEP_TASK, {"seconds": hold}, queue=QUEUE)
                                          for _ in range(_RUNNING)])
            started = time.monotonic()
            deadline = started + hold + 30
            peak = completed = 0
            ctx.status(f"memory: {_RUNNING} jobs sleeping {hold:g} s")
            while completed < _RUNNING and time.monotonic() < deadline:
                time.sleep(_INTERVAL_S)
                peak = max(peak, probe.count_running())
                completed = probe.count_completed()
            window = sampler.since(started)
    note = f"1 worker x {_RUNNING}, {_RUNNING} async handlers sleeping {hold:g} s each; RSS every {_INTERVAL_S:g} s"
    if completed < _RUNNING:
        note += f"; only {completed} of {_RUNNING} finished within {hold + 30:g} s"
    return [*_rss_samples(prefix, idle, window, note), Sample(f"{prefix}_peak_running", "jobs", peak)]


MEMORY: list[Unit] = [Unit("memory, backlog", _backlog), Unit("memory, 50 running", _running)]
