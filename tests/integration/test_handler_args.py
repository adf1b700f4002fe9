"""Args that cannot fit the handler's signature fail the job at once instead of burning retries."""

from __future__ import annotations

import threading

import psycopg

from pgqueue import App, Job, Worker
from pgqueue.settings import Settings
from tests.helpers import wait_until


def test_args_that_do_not_fit_the_handler_fail_the_job_at_once_without_running_it(dsn: str) -> None:
    settings = Settings(dsn=dsn, lease_seconds=5, poll_seconds=0.2, shutdown_grace_seconds=2)
    app = App(dsn, settings=settings)
    ran: list[int] = []

    @app.task(name="greet", max_attempts=5)
    def greet(job: Job, name: str) -> str:
        ran.append(job.id)
        return f"hello {name}"

    wrong = app.enqueue(None, "greet", {"nmae": "Ada"})
    right = app.enqueue(None, "greet", {"name": "Ada"})
    worker = Worker(app, concurrency=2, settings=settings)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
    thread.start()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            def states() -> dict[int, str] | None:
                rows: dict[int, str] = dict(conn.execute("SELECT id, state FROM pgqueue.jobs").fetchall())
                return rows if rows.get(wrong) == "failed" and rows.get(right) == "completed" else None

            wait_until(states, timeout=15)
            attempt, error = conn.execute(
                "SELECT attempt, last_error FROM pgqueue.jobs WHERE id = %s", [wrong]).fetchone() or (None, None)
    finally:
        worker.stop()
        thread.join(timeout=15)
    assert attempt == 1
    assert error["type"] == "InvalidArgs"
    assert "unexpected 'nmae'" in error["message"]
    assert "missing 'name'" in error["message"]
    assert ran == [right]
