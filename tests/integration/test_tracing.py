"""The tracing seam without a tracing library: a traced producer's jobs run on untraced workers
(the trace context never reaches the handler), and an untraced app stores nothing."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from pgqueue import App, Job, Snooze, Worker
from pgqueue._tracing import TRACE_KEY, JobSpan
from pgqueue.admin import cancel_job
from pgqueue.settings import Settings

Conn = psycopg.Connection[TupleRow]
CARRIER = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


class _FixedCarrier:
    def carrier(self) -> dict[str, str] | None:
        return CARRIER

    def job_span(self, job: Job, carrier: dict[str, str] | None) -> Any:
        return nullcontext(_NoSpan())


class _NoSpan:
    def set_outcome(self, outcome: str, error_type: str | None = None) -> None:
        pass


def test_a_traced_producers_job_runs_on_an_untraced_worker_with_clean_args(dsn: str, conn: Conn) -> None:
    producer = App(dsn)
    producer.tracing = _FixedCarrier()
    job_id = producer.enqueue(conn, "greet", {"name": "Ada"})
    conn.commit()
    assert conn.execute("SELECT args FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone() == (
        {"name": "Ada", TRACE_KEY: CARRIER},)

    settings = Settings(dsn=dsn, poll_seconds=0.2, lease_seconds=5, shutdown_grace_seconds=2)
    worker_app = App(dsn, settings=settings)
    seen: list[dict[str, Any]] = []

    @worker_app.task(name="greet")
    def greet(job: Job, name: str) -> str:
        seen.append(dict(job.args))
        return name

    Worker(worker_app, settings=settings).run_until_empty()
    assert seen == [{"name": "Ada"}]
    assert worker_app.result(conn, job_id, timeout=5) == "Ada"


def test_an_untraced_app_stores_no_trace_context(dsn: str, conn: Conn) -> None:
    job_id = App(dsn).enqueue(conn, "greet", {"name": "Ada"})
    assert conn.execute("SELECT args FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone() == ({"name": "Ada"},)
    span: JobSpan = _NoSpan()
    span.set_outcome("completed")


def test_importing_pgqueue_and_enqueueing_never_loads_opentelemetry() -> None:
    code = ("import sys, pgqueue; app = pgqueue.App('postgresql://x@127.0.0.1:1/x'); "
            "app._new_job('t', {'a': 1}); import pgqueue.worker; "
            "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'loaded'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


class _RecordingTracing:
    """Records each job span's outcome, as an integration would report it."""

    def __init__(self) -> None:
        self.outcomes: dict[str, list[tuple[str, str | None]]] = {}

    def carrier(self) -> dict[str, str] | None:
        return None

    def job_span(self, job: Job, carrier: dict[str, str] | None) -> Any:
        outcomes = self.outcomes.setdefault(job.task, [])

        class _Span:
            def set_outcome(self, outcome: str, error_type: str | None = None) -> None:
                outcomes.append((outcome, error_type))

        return nullcontext(_Span())


def test_a_snoozed_or_cancelled_attempts_span_says_so_not_retry(dsn: str, conn: Conn) -> None:
    # Both were reported as outcome "retry" (a cancelled one with error type "Cancelled").
    settings = Settings(dsn=dsn, poll_seconds=0.2, lease_seconds=5, shutdown_grace_seconds=2)
    app = App(dsn, settings=settings)
    app.tracing = tracing = _RecordingTracing()
    started = threading.Event()

    @app.task(name="nap")
    def nap(job: Job) -> None:
        if job.attempt == 1 and not tracing.outcomes["nap"]:
            raise Snooze(delay=0)

    @app.task(name="long")
    def long(job: Job) -> None:
        started.set()
        for _ in range(600):  # a bound: 30 s
            job.raise_if_cancelled()
            time.sleep(0.05)

    nap.enqueue(conn)
    long_id = long.enqueue(conn)
    conn.commit()
    worker = threading.Thread(target=Worker(app, settings=settings).run_until_empty, daemon=True)
    worker.start()
    assert started.wait(30)
    cancel_job(conn, long_id)
    conn.commit()
    worker.join(30)

    assert not worker.is_alive()
    assert tracing.outcomes == {"nap": [("snoozed", None), ("completed", None)], "long": [("cancelled", None)]}
