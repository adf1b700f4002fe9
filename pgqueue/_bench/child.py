"""One benchmark worker process: ``python -m pgqueue._bench.child`` (started by ``WorkerProcesses``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
from dataclasses import replace

from pgqueue._bench.workers import ASYNC, DSN_ENV, KEY_ENV, LOG_ENV, PROBE_TASK, QUEUE, SLEEP_TASK, SYNC, TASK
from pgqueue.app import App
from pgqueue.jobs import Job
from pgqueue.settings import Settings
from pgqueue.worker import Worker


def _main() -> int:
    parser = argparse.ArgumentParser(prog="python -m pgqueue._bench.child")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--handler", choices=(ASYNC, SYNC), default=ASYNC)
    parser.add_argument("--record-starts", action="store_true")
    # The latency-load scenario: only the probe jobs write their start, the backlog's no-ops stay quiet.
    parser.add_argument("--record-probes", action="store_true")
    # The churn scenario's retention: the worker's own maintenance leader prunes and vacuums.
    parser.add_argument("--retain-completed", type=float, default=None)
    parser.add_argument("--prune-interval", type=float, default=None)
    # The limits scenario serves its queue by name (a worker of every queue scans a limited
    # queue's backlog in its plain claim, as it does a paused one's).
    parser.add_argument("--queue", action="append", default=None)
    options = parser.parse_args()
    # A diagnostic aid: the worker's own log events (the stdlib fallback of pgqueue._log) on the
    # bench's stderr, at this level (e.g. WARNING). Silent by default, as the measured worker runs.
    if level := os.environ.get(LOG_ENV):
        logging.basicConfig(level=level.upper(), stream=sys.stderr)
    record = options.record_starts
    record_probes = options.record_probes
    out = sys.stdout

    def noop(job: Job, i: int = 0) -> None:
        if record:
            out.write(f"{i} {time.time()}\n")
            out.flush()

    async def noop_async(job: Job, i: int = 0) -> None:
        noop(job, i)

    async def probe(job: Job, i: int = 0) -> None:
        if record_probes:
            out.write(f"{i} {time.monotonic()}\n")
            out.flush()

    async def sleep(job: Job, seconds: float = 1.0) -> None:
        await asyncio.sleep(seconds)

    dsn = os.environ[DSN_ENV]
    settings = Settings(dsn=dsn)
    if options.retain_completed is not None:
        settings = replace(settings, retain_completed=options.retain_completed)
    if options.prune_interval is not None:
        settings = replace(settings, prune_interval_seconds=options.prune_interval)
    if key := os.environ.get(KEY_ENV):
        settings = replace(settings, encryption_keys=(key,), encrypt_all=True)
    app = App(dsn, settings=settings)
    app.task(name=TASK, queue=QUEUE)(noop_async if options.handler == ASYNC else noop)
    app.task(name=PROBE_TASK, queue=QUEUE)(probe)
    app.task(name=SLEEP_TASK, queue=QUEUE)(sleep)
    worker = Worker(app, queues=options.queue, concurrency=options.concurrency)
    finished = threading.Event()

    def stop_when_stdin_closes() -> None:
        sys.stdin.read()
        # stop() is a no-op until the worker's loop exists, so repeat it until run() returns.
        while not finished.wait(0.1):
            worker.stop()

    threading.Thread(target=stop_when_stdin_closes, name="bench-stop", daemon=True).start()
    try:
        return worker.run(install_signal_handlers=False)
    finally:
        finished.set()


if __name__ == "__main__":
    sys.exit(_main())
