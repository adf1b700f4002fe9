"""The typer application: global options, command groups, and the single error boundary."""

from __future__ import annotations

import sys
from typing import Annotated

import psycopg
import typer

from pgqueue import __version__
from pgqueue.cli._logging import configure_logging
from pgqueue.errors import PgqueueError

app = typer.Typer(
    name="pgqueue",
    help="pgqueue: a PostgreSQL-native job queue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    log_format: Annotated[
        str, typer.Option("--log-format", envvar="PGQUEUE_LOG_FORMAT", help="console or json")
    ] = "console",
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        print(__version__)
        raise typer.Exit(0)
    if log_format not in {"console", "json"}:
        print(f"pgqueue: error: --log-format {log_format!r} must be 'console' or 'json'", file=sys.stderr)
        raise typer.Exit(2)
    configure_logging(log_format)


def _register() -> None:
    # Imported here so each command module can import `app` helpers without a cycle.
    from pgqueue.cli import embedded, migrate, worker

    app.add_typer(embedded.app, name="embedded")
    app.command("migrate")(migrate.migrate)
    app.command("worker")(worker.worker)
    from pgqueue.cli import scheduler, schedules

    app.command("scheduler")(scheduler.scheduler)
    app.add_typer(schedules.app, name="schedules")
    from pgqueue.cli import demo

    app.command("demo")(demo.demo)
    from pgqueue.cli import dashboard

    app.command("dashboard")(dashboard.dashboard)
    from pgqueue.cli import bench

    app.command("bench")(bench.bench)
    from pgqueue.cli import soak

    app.command("soak")(soak.soak)

    from pgqueue.cli import audit

    app.add_typer(audit.app, name="audit")
    from pgqueue.cli import keys

    app.add_typer(keys.app, name="keys")
    from pgqueue.cli import prune

    app.command("prune")(prune.prune)
    from pgqueue.cli import enqueue, jobs, queues, stats

    app.command("enqueue")(enqueue.enqueue)
    app.add_typer(jobs.app, name="jobs")
    app.add_typer(queues.app, name="queues")
    app.command("stats")(stats.stats)
    app.command("health")(stats.health)


_register()


def main() -> None:
    """Entry point of the ``pgqueue`` script: user errors become one line and exit 1."""
    try:
        app()
    except PgqueueError as exc:
        print(f"pgqueue: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"pgqueue: error: database unavailable: {first}", file=sys.stderr)
        sys.exit(1)
