"""pgqueue scheduler: insert due cron jobs until SIGTERM/SIGINT. Run as many as you like."""

from __future__ import annotations

import math
import signal
import threading
from datetime import timedelta
from typing import Annotated

import typer

from pgqueue._cron import DEFAULT_MISFIRE_GRACE
from pgqueue._db.sessions import check_dsn
from pgqueue._loader import load_app
from pgqueue._scheduler import MIN_MISFIRE_GRACE_SECONDS, MISFIRE_GRACE_RULE, Scheduler
from pgqueue.cli._context import DsnOption, fail, resolve, usage_error
from pgqueue.errors import PgqueueError
from pgqueue.settings import normalize_dsn

AppOption = Annotated[str, typer.Option("--app", help="Your App, as 'package.module:app' (its schedules are synced).")]


def scheduler(
    app_path: AppOption,
    misfire_grace_seconds: Annotated[
        float, typer.Option(
            "--misfire-grace-seconds", envvar="PGQUEUE_MISFIRE_GRACE_SECONDS",
            help="A fire time processed later than this was missed (no scheduler ran): the schedule's "
                 "misfire policy (once, skip, all) decides what to do with it."),
    ] = DEFAULT_MISFIRE_GRACE.total_seconds(),
    dsn: DsnOption = None,
) -> None:
    """Insert due cron jobs until SIGTERM/SIGINT (then exit 0).

    At start, the app's code schedules (app.schedule) are synced to the database: created or
    updated; code schedules no longer in the code are disabled. Any number of schedulers may run
    at once: the database admits each fire time once.
    """
    if not MIN_MISFIRE_GRACE_SECONDS <= misfire_grace_seconds < math.inf:  # nan and inf parse as floats
        usage_error(f"--misfire-grace-seconds {misfire_grace_seconds:g} {MISFIRE_GRACE_RULE}")
    try:
        app = load_app(app_path)
        if dsn:
            target = normalize_dsn(dsn)
        elif app._dsn is None:
            target = resolve(None)
        else:
            target = app.dsn
        runner = Scheduler(app, misfire_grace=timedelta(seconds=misfire_grace_seconds), dsn=check_dsn(target))
    except PgqueueError as exc:
        fail(str(exc))
    stop = threading.Event()
    # Stop after the pass in progress: its transaction commits or rolls back whole either way.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        runner.run(stop)
    except PgqueueError as exc:
        fail(str(exc))
    raise typer.Exit(0)
