"""pgqueue demo: the whole system in one command on the embedded default."""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pgqueue._db.databases import DatabaseClaim, recreate_database
from pgqueue._db.queues import QueueStore
from pgqueue.cli._context import DsnOption, fail, resolve, usage_error
from pgqueue.cli._logging import set_level
from pgqueue.errors import ConfigurationError, PgqueueError
from pgqueue.settings import Settings, redact_dsn
from pgqueue.worker import Worker

DEMO_DATABASE = "pgqueue_demo"
_STATES = ("scheduled", "available", "running", "completed", "failed")


def _stats_table(rows: list[dict[str, Any]], elapsed: float) -> Table:
    table = Table(title=f"pgqueue demo - {elapsed:4.1f}s", title_justify="left")
    table.add_column("queue")
    for state in _STATES:
        table.add_column(state, justify="right")
    for row in rows:
        table.add_row(row["queue"], *(str(row[state]) for state in _STATES))
    return table


def _summary_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="summary", title_justify="left")
    for column in ("queue", "jobs", "completed", "failed", "retries", "run p50 ms"):
        table.add_column(column, justify="left" if column == "queue" else "right")
    for row in rows:
        p50 = row["run_ms_p50"]
        table.add_row(row["queue"], str(row["jobs"]), str(row["completed"]), str(row["failed"]),
                      str(row["retries"]), f"{p50:.1f}" if p50 is not None else "-")
    return table


def _keep_running(app: Any, scale: int) -> None:
    from pgqueue import _demo

    try:
        while True:
            time.sleep(20)
            app.enqueue_many(None, _demo.workload(scale))
    except KeyboardInterrupt:
        print("", file=sys.stderr)


def demo(
    dsn: DsnOption = None,
    scale: Annotated[int, typer.Option(min=1, max=100, help="Multiply the sample workload.")] = 1,
    concurrency: Annotated[int, typer.Option(min=1, max=500, help="Worker concurrency.")] = 20,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 120.0,
    database: Annotated[str, typer.Option(help="Name of the demo database (recreated).")] = DEMO_DATABASE,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every job event.")] = False,
    keep_running: Annotated[bool, typer.Option(
        "--keep-running", help="After the summary, keep the worker and scheduler running and enqueue a fresh "
                               "batch every 20 s until Ctrl-C (to watch with `pgqueue dashboard`).")] = False,
) -> None:
    """Run the whole system once: migrate, enqueue sample jobs, work them with a live view, summarise.

    The demo uses its own database (pgqueue_demo, recreated each run) on the configured server,
    so it never touches your jobs; it is left in place afterwards for you to explore. It prints the
    `pgqueue dashboard --dsn ...` command that opens the dashboard on it (run it in another terminal;
    with --keep-running the demo goes on producing jobs for it to show). While a demo runs, another
    one on the same server and database is refused (exit 1) and touches nothing.
    """
    if not 0 < timeout < math.inf:  # nan and inf parse as floats
        usage_error(f"--timeout {timeout:g} must be seconds, greater than zero (and finite)")
    # PostgreSQL cuts a longer name to 63 bytes: the demo would then connect to a database it never made.
    if not 0 < len(database.encode("utf-8")) <= 63 or "\x00" in database:
        usage_error(f"--database {database!r} must be a database name of 1-63 bytes")
    console = Console()
    errors = Console(stderr=True)
    if not verbose:
        # Per-job info lines would scroll the live view away; warnings (dead-lettered jobs) stay.
        set_level(logging.WARNING)
    server = resolve(dsn)
    # Held until the process ends: a second demo on this server refuses to recreate the database
    # under this one (it would drop it, ending this run's sessions).
    claim = DatabaseClaim(server, database, "demo")
    try:
        holder = claim.acquire()
    except PgqueueError as exc:
        fail(str(exc))
    if holder is not None:
        fail(f"a demo is already running on database {database!r} (server pid {holder}); wait for it to finish "
             f"or stop it, or run this one with --database another_name")
    try:
        demo_dsn = recreate_database(server, database)
    except ConfigurationError as exc:
        errors.print(f"pgqueue: {exc}; running the demo in the configured database instead")
        demo_dsn = server
    try:
        errors.print(f"[dim]database: {redact_dsn(demo_dsn)}[/dim]")
        errors.print(f"watch it in a browser (another terminal): pgqueue dashboard --dsn '{redact_dsn(demo_dsn)}'",
                     markup=False, highlight=False)
        from pgqueue import _migrate  # alembic + SQLAlchemy: loaded only by the commands that migrate

        _migrate.upgrade(demo_dsn)
        # Imported here, not at the top: it builds an App from the environment, and a bad setting
        # there must fail this command in one line, not the import of every command.
        from pgqueue import _demo

        app = _demo.app
        app._dsn = demo_dsn
        app.settings = Settings(dsn=demo_dsn, lease_seconds=10, poll_seconds=1, shutdown_grace_seconds=5)
        specs = _demo.workload(scale)
        ids = app.enqueue_many(None, specs)
        errors.print(f"enqueued {len(ids)} jobs on queues {', '.join(_demo.QUEUES)}; starting a worker "
                     f"(concurrency {concurrency}) and a scheduler (cron '*/2 * * * * *' -> nightly-cleanup)")
    except PgqueueError as exc:
        fail(str(exc))

    from pgqueue._scheduler import start_in_worker

    scheduler = start_in_worker(app, demo_dsn)
    worker = Worker(app, concurrency=concurrency, settings=app.settings)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False}, daemon=True)
    started = time.monotonic()
    thread.start()
    finished = False
    try:
        with app.connect(autocommit=True) as conn:
            store = QueueStore(conn)
            with Live(console=console, refresh_per_second=4, transient=not console.is_terminal) as live:
                while time.monotonic() - started < timeout:
                    rows = store.queue_stats()
                    live.update(_stats_table(rows, time.monotonic() - started))
                    if sum(row[state] for row in rows for state in ("scheduled", "available", "running")) == 0:
                        finished = True
                        break
                    time.sleep(0.25)
            summary = store.summarize_queues()
        if keep_running:
            console.print(_summary_table(summary))
            errors.print("--keep-running: a fresh batch every 20 s; Ctrl-C stops the worker and the scheduler")
            _keep_running(app, scale)
    except PgqueueError as exc:
        fail(str(exc))
    finally:
        scheduler.stop()
        worker.stop()
        thread.join(timeout=15)
        claim.close()
    elapsed = time.monotonic() - started
    total = sum(row["jobs"] for row in summary)
    completed = sum(row["completed"] for row in summary)
    failed = sum(row["failed"] for row in summary)
    console.print(_summary_table(summary))
    console.print(Group(
        Text(f"{total} jobs in {elapsed:.1f}s: {completed} completed, {failed} failed "
             "(the dead-letter state: kept for inspection and `pgqueue jobs retry`)."),
        Text(f"Explore it: pgqueue jobs list --state failed --dsn {redact_dsn(demo_dsn)}", style="dim"),
    ))
    if not finished:
        print(f"pgqueue: error: the demo did not finish within {timeout:g}s", file=sys.stderr)
        raise typer.Exit(1)
