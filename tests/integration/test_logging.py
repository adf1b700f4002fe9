"""Logging as a library: silent unless the application configures logging, and never a secret.

structlog's configuration is process-global and an unconfigured structlog prints to stdout, so the
"prints nothing" checks run a tiny worker script in a subprocess. The content checks use
``structlog.testing.capture_logs()`` in-process and restore structlog's defaults afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import structlog
from psycopg.rows import TupleRow
from structlog.typing import EventDict

from pgqueue import App, Backoff, Job, Worker
from pgqueue.settings import Settings
from tests.helpers import REPO_ROOT, empty_tables, scratch_database, wait_until

Conn = psycopg.Connection[TupleRow]

SECRET_SSN = "123-45-6789"
SECRET_PASSWORD = "hunter2-not-for-logs"  # the test server trusts local users, so any password connects
WAIT = 15.0

WORKER_SCRIPT = textwrap.dedent("""
    import sys, threading, time

    import psycopg

    {configure}

    from pgqueue import App, Backoff, Discard
    from pgqueue import Worker
    from pgqueue.settings import Settings

    dsn = sys.argv[1]
    settings = Settings(dsn=dsn, lease_seconds=2, poll_seconds=0.5, shutdown_grace_seconds=5)
    app = App(dsn, settings=settings)

    @app.task(name="ok")
    def ok(job, ssn):
        return {{"ssn": ssn}}

    @app.task(name="flaky", max_attempts=2, backoff=Backoff.fixed(0))
    def flaky(job, ssn):
        raise ValueError("could not verify " + ssn)

    @app.task(name="discarded")
    async def discarded(job, ssn):
        raise Discard("unsubscribed " + ssn)

    for task in ("ok", "flaky", "discarded", "not-registered"):
        app.enqueue(None, task, {{"ssn": "{ssn}"}})

    worker = Worker(app, settings=settings, concurrency=2)
    thread = threading.Thread(target=worker.run, kwargs={{"install_signal_handlers": False}})
    thread.start()
    deadline = time.monotonic() + 20
    with psycopg.connect(dsn, autocommit=True) as db:
        while db.execute("SELECT count(*) FROM pgqueue.jobs WHERE state IN ('completed', 'failed')"
                         ).fetchone()[0] < 4:
            if time.monotonic() > deadline:
                sys.exit(3)  # an exit code, not output: the test reads the output
            time.sleep(0.05)
    worker.stop()
    thread.join(30)
    sys.exit(4 if thread.is_alive() else 0)
""")

STDLIB_LOGGING = "import logging; logging.basicConfig(level=logging.INFO, stream=sys.stderr)"


def with_password(dsn: str, password: str) -> str:
    parts = urlsplit(dsn)
    netloc = f"{parts.username or 'root'}:{password}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_dsn(pg_server_dsn: str, template_db: str) -> Iterator[str]:
    with scratch_database(pg_server_dsn, template_db) as database_dsn:
        yield database_dsn


@pytest.fixture
def dsn(module_dsn: str) -> str:
    """Overrides the per-test database: one per module, emptied before each test."""
    # The server fixtures hand out URL DSNs; these tests put a password into one.
    assert "://" in module_dsn, f"expected a URL DSN, got {module_dsn!r}"
    empty_tables(module_dsn, "pgqueue.jobs", "pgqueue.job_events", "pgqueue.workers", "pgqueue.leaders")
    return module_dsn


@pytest.fixture
def captured() -> Iterator[list[EventDict]]:
    """Every structlog event while the test runs, with contextvars merged in as an app would."""
    was_configured = structlog.is_configured()
    try:
        with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            yield logs
    finally:
        if not was_configured:
            structlog.reset_defaults()  # capture_logs leaves structlog "configured": undo it for other tests


@contextmanager
def running_worker(app: App, db: Conn, concurrency: int) -> Iterator[Worker]:
    """An in-process worker thread, stopped gracefully (so its last events are captured too)."""
    worker = Worker(app, settings=app.settings, concurrency=concurrency)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False}, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()  # safe before the worker's loop started: it then stops as soon as it starts
        thread.join(timeout=30)
        assert not thread.is_alive(), "the worker did not stop"


def run_worker_script(tmp_path: Path, dsn: str, configure: str = "") -> subprocess.CompletedProcess[str]:
    script = tmp_path / "worker_script.py"
    script.write_text(WORKER_SCRIPT.format(configure=configure, ssn=SECRET_SSN))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGQUEUE_", "PYTHON"))}
    env["PGQUEUE_HOME"] = os.environ.get("PGQUEUE_HOME", "")
    return subprocess.run([sys.executable, str(script), with_password(dsn, SECRET_PASSWORD)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)


# --- unconfigured: silent ---------------------------------------------------------------------


def test_an_unconfigured_worker_that_completes_and_fails_jobs_prints_nothing(
        tmp_path: Path, dsn: str, db: Conn) -> None:
    done = run_worker_script(tmp_path, dsn)

    assert done.returncode == 0, f"the script failed (exit {done.returncode}): {done.stderr[-2000:]}"
    assert done.stdout == ""
    assert done.stderr == ""
    states: dict[str, str] = dict(db.execute("SELECT task, state FROM pgqueue.jobs").fetchall())
    assert states == {"ok": "completed", "flaky": "failed", "discarded": "failed", "not-registered": "failed"}


def test_an_app_that_configures_stdlib_logging_gets_the_events_without_secrets(
        tmp_path: Path, dsn: str) -> None:
    done = run_worker_script(tmp_path, dsn, configure=STDLIB_LOGGING)

    assert done.returncode == 0, f"the script failed (exit {done.returncode}): {done.stderr[-2000:]}"
    assert "job.completed" in done.stderr
    assert "job.failed" in done.stderr
    for secret in (SECRET_SSN, SECRET_PASSWORD, "could not verify", "unsubscribed"):
        assert secret not in done.stdout + done.stderr


# --- configured: what the events carry --------------------------------------------------------


def test_job_events_carry_job_id_task_queue_and_attempt_and_never_args_results_or_error_text(
        dsn: str, db: Conn, captured: list[EventDict]) -> None:
    secret_dsn = with_password(dsn, SECRET_PASSWORD)
    settings = Settings(dsn=secret_dsn, lease_seconds=2, poll_seconds=0.5, shutdown_grace_seconds=5)
    app = App(secret_dsn, settings=settings)

    @app.task(name="verify", queue="identity")
    def verify(job: Job, ssn: str) -> dict[str, str]:
        return {"verified": ssn}

    @app.task(name="flaky", queue="identity", max_attempts=2, backoff=Backoff.fixed(0))
    async def flaky(job: Job, ssn: str) -> None:
        raise ValueError(f"could not verify {ssn}")

    ok_id = app.enqueue(None, "verify", {"ssn": SECRET_SSN})
    flaky_id = app.enqueue(None, "flaky", {"ssn": SECRET_SSN})
    with running_worker(app, db, concurrency=2):
        wait_until(lambda: db.execute(
            "SELECT count(*) FROM pgqueue.jobs WHERE state IN ('completed', 'failed')").fetchone() == (2,),
            timeout=WAIT, message="both jobs to finish")

    completed = one(captured, "job.completed", job_id=ok_id)
    assert fields(completed) == {"job_id": ok_id, "task": "verify", "queue": "identity", "attempt": 1}
    retry = one(captured, "job.retry_scheduled", job_id=flaky_id)
    assert fields(retry) == {"job_id": flaky_id, "task": "flaky", "queue": "identity", "attempt": 1}
    failed = one(captured, "job.failed", job_id=flaky_id)
    assert fields(failed) == {"job_id": flaky_id, "task": "flaky", "queue": "identity", "attempt": 2}
    assert retry["error_type"] == failed["error_type"] == "ValueError"

    everything = repr(captured)
    assert SECRET_SSN not in everything, "job args or results reached the logs"
    assert "could not verify" not in everything, "error text reached the logs (only error_type may)"
    assert SECRET_PASSWORD not in everything, "the DSN's password reached the logs"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_handler_own_log_calls_carry_the_job_context(
        dsn: str, db: Conn, captured: list[EventDict], kind: str) -> None:
    settings = Settings(dsn=dsn, lease_seconds=2, poll_seconds=0.5, shutdown_grace_seconds=5)
    app = App(dsn, settings=settings)

    if kind == "sync":
        @app.task(name="chatty", queue="talk")
        def chatty(job: Job) -> None:
            structlog.get_logger("myapp").info("handler.working")
    else:
        @app.task(name="chatty", queue="talk")
        async def chatty_async(job: Job) -> None:
            structlog.get_logger("myapp").info("handler.working")

    job_ids = [app.enqueue(None, "chatty", {}) for _ in range(3)]
    with running_worker(app, db, concurrency=3):
        wait_until(lambda: db.execute(
            "SELECT count(*) FROM pgqueue.jobs WHERE state = 'completed'").fetchone() == (3,),
            timeout=WAIT, message="the jobs to complete")

    said = [e for e in captured if e["event"] == "handler.working"]
    # Each handler's log carries its own job, even with three running at once.
    assert sorted((e["job_id"], e["task"], e["queue"], e["attempt"]) for e in said) == [
        (job_id, "chatty", "talk", 1) for job_id in sorted(job_ids)]


def one(captured: list[EventDict], event: str, **match: Any) -> EventDict:
    found = [e for e in captured if e["event"] == event and all(e.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one {event} {match}, got {found}; events: {[e['event'] for e in captured]}"
    return found[0]


def fields(entry: EventDict) -> dict[str, Any]:
    return {key: entry.get(key) for key in ("job_id", "task", "queue", "attempt")}
