"""The poison-handler catalogue: no handler behaviour can stop a worker.

Every poison handler of ``poison_app.py`` runs against ONE worker process, which must dead-letter
each poison job with a clear ``last_error`` and still complete ordinary jobs afterwards.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pgqueue import App, JobSpec
from tests.e2e.conftest import E2E_DIR, is_running
from tests.helpers import wait_until
from tests.plugins.processes import Db, ProcessApp, SpawnWorker


@pytest.fixture
def process_app() -> ProcessApp:
    return ProcessApp("poison_app:app", cwd=E2E_DIR, concurrency=8, lease_seconds=3.0, poll_seconds=0.3,
                      grace_seconds=3.0)


#: Poison task -> what its dead-lettered job's last_error must say (type, and text in the message).
EXPECTED: dict[str, tuple[str, str]] = {
    "poison-result-surrogate": ("ResultNotSerializable", "surrogate"),
    "poison-error-surrogate": ("ValueError", "bad"),
    "poison-progress-surrogate": ("ValueError", "surrogate"),
    "poison-progress-surrogate-swallowed": ("RuntimeError", "bad progress note"),
    "poison-unprintable": ("UnprintableError", "str() raised"),
    "poison-generator-exit": ("GeneratorExit", ""),
    "poison-async-generator-exit": ("GeneratorExit", ""),
    "poison-base-exception": ("OddBaseException", "odd"),
    "poison-huge-result": ("ResultTooLarge", "limit"),
    "poison-swallow-cancel": ("JobTimeout", "timeout"),
    "poison-fork": ("RuntimeError", "forked"),
}


def test_one_worker_survives_every_poison_handler_and_still_completes_ordinary_jobs(
        worker_dsn: str, db: Db, spawn_worker: SpawnWorker, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    app = App(worker_dsn)
    # This App does not know the tasks: the enqueue states the poison tasks' max_attempts itself.
    specs = [JobSpec(task, {"pid_file": str(pid_file)} if task == "poison-fork" else {}, max_attempts=2)
             for task in EXPECTED]
    poison_ids = dict(zip(EXPECTED, app.enqueue_many(None, specs), strict=True))
    worker = spawn_worker(worker_dsn)

    def poison_settled() -> bool:
        row = db.execute("SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) AND state = 'failed'",
                         [list(poison_ids.values())]).fetchone()
        return row is not None and row[0] == len(poison_ids)

    try:
        wait_until(poison_settled, timeout=60)
    except AssertionError:
        states = db.execute("SELECT task, state, attempt, last_error->>'type' FROM pgqueue.jobs ORDER BY id").fetchall()
        raise AssertionError(f"poison jobs did not all fail: {states}\n{worker.describe()}") from None
    assert worker.alive(), worker.describe()
    for task, job_id in poison_ids.items():
        row = db.execute("SELECT state, attempt, last_error FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone()
        assert row is not None
        state, attempt, error = row
        error_type, fragment = EXPECTED[task]
        assert state == "failed", (task, row)
        assert attempt <= 2, (task, row)
        assert error["type"] == error_type, (task, error)
        assert fragment in error["message"], (task, error)
        assert json.dumps(error)  # valid JSON all the way down

    # The same process still does ordinary work, promptly.
    ok_ids = app.enqueue_many(None, [JobSpec("ok") for _ in range(20)])
    wait_until(lambda: db.execute("SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) AND state = 'completed'",
                                  [ok_ids]).fetchone() == (len(ok_ids),),
               timeout=30, message=f"ordinary jobs completed\n{worker.describe()}")
    assert not worker.log_events("worker.part_crashed"), worker.describe()
    # Nothing reached stderr as a traceback (its messages could quote a decrypted payload).
    assert "Traceback" not in worker.stderr(), worker.describe()

    # A handler's forked child does not outlive the worker.
    child = int(pid_file.read_text())
    # ... and the handler that ignores cancellation does not hold the exit up (grace is 3 s).
    started = time.monotonic()
    assert worker.stop(timeout=30) == 0, worker.describe()
    assert time.monotonic() - started < 12, worker.describe()
    wait_until(lambda: not is_running(child), timeout=10, message="the handler's forked child ended")
