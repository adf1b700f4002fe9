"""Prometheus metrics for pgqueue (needs ``prometheus-client``: the ``web`` extra).

Series:

- ``pgqueue_jobs_total{queue,task,outcome}`` (counter): attempts that ended, by outcome
  (``completed``, ``retried``, ``failed``, ``discarded``, ``rescued``, ``cancelled``).
- ``pgqueue_job_duration_seconds{queue,task}`` (histogram): run time of those attempts.
- ``pgqueue_queue_depth{queue,state}`` (gauge): jobs scheduled, available, running, failed, cancelled
  (a queue once reported stays, at 0 when drained, rather than vanishing from the scrape).
- ``pgqueue_queue_lag_seconds{queue}`` (gauge): how long the oldest available job has waited.
- ``pgqueue_workers`` (gauge): live worker processes (heartbeat within their lease).
- ``pgqueue_circuit_breaker_state{task,state}`` (gauge): 1 for each task's breaker's current state
  (closed, open, half_open), 0 for the others.

Two sources feed the counter and the histogram:

- **The database** (the dashboard's ``/metrics``, :class:`DatabaseCollector` with
  ``outcomes_from_database=True``): every scrape reads the outcome rows that ``pgqueue.job_events``
  gained since the previous scrape, by transaction id below the oldest running transaction, so each
  row is counted exactly once, whichever worker wrote it. The counts are cluster-wide and start at
  zero when the process starts (Prometheus' ``rate()`` handles the restart). A long-open
  transaction anywhere on the server holds the counts back until it ends; jobs already pruned by
  retention are counted under ``queue="unknown"``.
- **The process itself** (a worker's ``--metrics-port``): :meth:`Metrics.observe_job` on each
  outcome it writes. Sum the workers' series in Prometheus; do not also scrape the dashboard's
  counter, which already covers every worker.

Depth, lag and workers are read at scrape time by one query (the ``queue_lag`` report) and one
count of the worker table, whatever the number of queues.

Example (what ``pgqueue worker --metrics-port 9090`` does; also for a Worker in your own process)::

    metrics = pgqueue.metrics.start_worker_metrics(9090, dsn)   # GET http://127.0.0.1:9090/metrics
    pgqueue.Worker(app, metrics=metrics).run()   # its acker counts each outcome it writes
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from pgqueue._db.audit import AuditStore
from pgqueue._db.breakers import BreakerStore
from pgqueue._db.reports import REPORTS, run_report
from pgqueue._db.sessions import connect
from pgqueue._db.workers import WorkerStore
from pgqueue._log import get_logger
from pgqueue.errors import PgqueueError

__all__ = ["DURATION_BUCKETS", "DatabaseCollector", "JobOutcomes", "Metrics", "start_worker_metrics"]

#: Upper bounds (seconds) of the run-time histogram.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
DEPTH_STATES = ("waiting", "scheduled", "available", "running", "failed", "cancelled")
# job_events' outcome rows -> the outcome label.
OUTCOMES = {"completed": "completed", "retry_scheduled": "retried", "failed": "failed", "discarded": "discarded",
            "rescued": "rescued", "cancelled": "cancelled"}

ConnectionFactory = Callable[[], AbstractContextManager[Any]]


class JobOutcomes:
    """Cumulative outcome counts and run-time buckets, thread-safe: the data of jobs_total and
    job_duration_seconds, whoever feeds it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[tuple[str, str, str], int] = {}
        # (queue, task) -> (count per bucket, +Inf last; sum of seconds)
        self._durations: dict[tuple[str, str], tuple[list[int], float]] = {}

    def observe(self, queue: str | None, task: str | None, outcome: str, seconds: float | None = None, *,
                count: int = 1, bucket: int | None = None, total_seconds: float | None = None) -> None:
        """Count ``count`` attempts; ``seconds`` (or a precomputed ``bucket`` index and
        ``total_seconds``) adds them to the run-time histogram."""
        key = (queue or "unknown", task or "unknown")
        if seconds is not None and bucket is None:
            bucket = next((i for i, bound in enumerate(DURATION_BUCKETS) if seconds <= bound), len(DURATION_BUCKETS))
            total_seconds = seconds * count
        with self._lock:
            totals_key = (*key, outcome)
            self._totals[totals_key] = self._totals.get(totals_key, 0) + count
            if bucket is not None:
                buckets, total = self._durations.get(key, ([0] * (len(DURATION_BUCKETS) + 1), 0.0))
                buckets[min(bucket, len(DURATION_BUCKETS))] += count
                self._durations[key] = (buckets, total + (total_seconds or 0.0))

    def families(self) -> list[Metric]:
        jobs = CounterMetricFamily("pgqueue_jobs", "Job attempts that ended, by outcome.",
                                   labels=["queue", "task", "outcome"])
        durations = HistogramMetricFamily("pgqueue_job_duration_seconds", "Run time of job attempts.",
                                          labels=["queue", "task"])
        with self._lock:
            for (queue, task, outcome), value in sorted(self._totals.items()):
                jobs.add_metric([queue, task, outcome], value)
            for (queue, task), (buckets, total) in sorted(self._durations.items()):
                cumulative, running = [], 0
                for bound, count in zip((*map(str, DURATION_BUCKETS), "+Inf"), buckets, strict=True):
                    running += count
                    cumulative.append((bound, running))
                durations.add_metric([queue, task], cumulative, total)
        return [jobs, durations]


class DatabaseCollector(Collector):
    """Queue depth, lag and live workers read from the database at each scrape; with
    ``outcomes_from_database``, also the outcomes written since the previous scrape (see module doc)."""

    def __init__(self, connection: ConnectionFactory, outcomes: JobOutcomes | None = None) -> None:
        self._connection = connection
        self._outcomes = outcomes
        self._horizon: int | None = None
        self._lock = threading.Lock()
        # Every queue reported so far. The report names only queues with live or dead-letter jobs
        # (or settings), so a queue whose jobs all completed would vanish from the scrape: its
        # series would go stale (gaps, "no data", absent() alerts firing) instead of reading 0.
        self._queues: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("pgqueue_queue_depth", "Jobs per queue and state (live and dead-letter).",
                                  labels=["queue", "state"])
        lag = GaugeMetricFamily("pgqueue_queue_lag_seconds", "Age of the oldest available job (0: none waiting).",
                                labels=["queue"])
        try:
            with self._lock, self._connection() as conn:
                rows = {row["queue"]: row for row in run_report(conn, REPORTS.report_queue_lag)}
                self._queues.update(rows)
                for queue in sorted(self._queues):
                    row = rows.get(queue, {})
                    for state in DEPTH_STATES:
                        depth.add_metric([queue, state], float(row.get(state) or 0))
                    lag.add_metric([queue], float(row.get("lag_seconds") or 0.0))
                alive, _ = WorkerStore(conn).count_live_workers()
                breakers = BreakerStore(conn).list_breakers()
                if self._outcomes is not None:
                    self._read_outcomes(conn, self._outcomes)
        except PgqueueError as exc:
            if self._outcomes is not None:
                raise  # the dashboard: every series it serves comes from the database (a 503)
            # A worker's endpoint: the outcomes it counted itself are still served (they are what
            # an outage needs looked at); the database's gauges are left out until it answers.
            get_logger("pgqueue.metrics").warning("metrics.database_unavailable", error_type=type(exc).__name__)
            return
        yield depth
        yield lag
        yield GaugeMetricFamily("pgqueue_workers", "Live worker processes.", value=float(alive))
        states = GaugeMetricFamily("pgqueue_circuit_breaker_state", "1 for the current state of each task's circuit "
                                   "breaker (closed, open, half_open), 0 for the others.", labels=["task", "state"])
        for breaker in breakers:
            for state in ("closed", "open", "half_open"):
                states.add_metric([breaker["task"], state], 1.0 if breaker["state"] == state else 0.0)
        yield states

    def _read_outcomes(self, conn: Any, outcomes: JobOutcomes) -> None:
        if self._horizon is None:  # counts start when this process starts
            self._horizon = AuditStore(conn).events_horizon()
            return
        horizon, rows = AuditStore(conn).finished_events(self._horizon, DURATION_BUCKETS)
        for row in rows:
            outcome = OUTCOMES.get(row["event"], row["event"])
            bucket = row["bucket"]
            outcomes.observe(row["queue"], row["task"], outcome, count=int(row["events"]),
                             bucket=int(bucket) if bucket is not None else None,
                             total_seconds=float(row["seconds"]))
        self._horizon = horizon


class _OutcomeCollector(Collector):
    def __init__(self, outcomes: JobOutcomes) -> None:
        self._outcomes = outcomes

    def collect(self) -> Iterator[Metric]:
        yield from self._outcomes.families()


class Metrics:
    """pgqueue's series in a registry of their own.

    Args:
        connection: a context manager factory yielding a connection (e.g. a pool's
            ``connection``); with it, depth, lag and workers are read at each scrape.
        outcomes_from_database: count outcomes from the audit trail (the dashboard); False when
            the process reports its own through :meth:`observe_job` (a worker).
    """

    def __init__(self, connection: ConnectionFactory | None = None, *, outcomes_from_database: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.outcomes = JobOutcomes()
        self.registry.register(_OutcomeCollector(self.outcomes))
        if connection is not None:
            self.registry.register(DatabaseCollector(connection, self.outcomes if outcomes_from_database else None))

    def observe_job(self, queue: str, task: str, outcome: str, seconds: float | None = None) -> None:
        """Count one attempt that ended (``outcome``: completed, retried, failed, discarded,
        rescued, cancelled) and its run time."""
        self.outcomes.observe(queue, task, outcome, seconds)

    def observe_event(self, queue: str, task: str, event: str, seconds: float | None = None) -> None:
        """:meth:`observe_job` by the audit event the outcome wrote (``retry_scheduled`` counts as
        ``retried``): what a :class:`pgqueue.Worker` built with ``metrics=`` calls from its acker."""
        self.outcomes.observe(queue, task, OUTCOMES.get(event, event), seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type, for an HTTP handler."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve ``GET /metrics`` on ``port`` from a daemon thread, without auth: on loopback unless
        ``host`` says otherwise (``"0.0.0.0"`` for a Prometheus outside the machine or container)."""
        start_http_server(port, addr=host, registry=self.registry)


def start_worker_metrics(port: int, dsn: str | None = None, *, host: str = "127.0.0.1") -> Metrics:
    """Serve a worker process's metrics on ``host:port`` (loopback by default: the endpoint has no
    auth): its own outcomes (:meth:`Metrics.observe_job`) and, with ``dsn``, depth, lag and workers
    read from the database at each scrape (a connection of its own per scrape, so the worker's
    sessions are never borrowed)."""
    connection = (lambda: connect(dsn, autocommit=True)) if dsn else None
    metrics = Metrics(connection)
    metrics.serve(port, host)
    return metrics
