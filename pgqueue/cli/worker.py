"""pgqueue worker: run jobs until SIGTERM/SIGINT."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from pgqueue._loader import load_app
from pgqueue._payload import check_queue_name
from pgqueue.cli._context import DsnOption, fail, resolve
from pgqueue.errors import PgqueueError
from pgqueue.settings import Settings, normalize_dsn

AppOption = Annotated[str, typer.Option("--app", help="Your App, as 'package.module:app'.")]


def worker(
    app_path: AppOption,
    queue: Annotated[
        list[str] | None, typer.Option("--queue", "-q", help="Queue to serve (repeatable; default all).")] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, max=1000, help="Jobs at once per process.")] = 10,
    processes: Annotated[int, typer.Option("--processes", "-p", min=1, max=64, help="Worker processes.")] = 1,
    lease_seconds: Annotated[
        float | None, typer.Option(envvar="PGQUEUE_LEASE_SECONDS", help="Lease without heartbeat.")] = None,
    poll_seconds: Annotated[
        float | None, typer.Option(envvar="PGQUEUE_POLL_SECONDS", help="Fallback poll interval.")] = None,
    shutdown_grace_seconds: Annotated[
        float | None, typer.Option(envvar="PGQUEUE_SHUTDOWN_GRACE_SECONDS", help="SIGTERM grace period.")] = None,
    with_scheduler: Annotated[bool, typer.Option(
        "--with-scheduler", help="Also run the cron scheduler in this process (syncs the app's schedules).")] = False,
    listen_dsn: Annotated[str | None, typer.Option(
        envvar="PGQUEUE_LISTEN_DSN", show_envvar=False,
        help="Direct PostgreSQL DSN for LISTEN only, when --dsn goes through PgBouncer (transaction pooling).")] = None,
    poll_only: Annotated[bool, typer.Option(
        "--poll-only", envvar="PGQUEUE_POLL_ONLY", show_envvar=False,
        help="Never LISTEN: find jobs by polling every --poll-seconds (for PgBouncer without a direct DSN).")] = False,
    dsn: DsnOption = None,
) -> None:
    """Run workers until SIGTERM/SIGINT: stop claiming, finish running jobs within the grace
    period, release the rest."""
    try:
        queues = [check_queue_name(q) for q in queue] if queue else None
        for name, value in (("--lease-seconds", lease_seconds), ("--poll-seconds", poll_seconds),
                            ("--shutdown-grace-seconds", shutdown_grace_seconds)):
            if value is not None and value <= 0:
                fail(f"{name} {value} must be greater than zero")
        settings = Settings.from_env(lease_seconds=lease_seconds, poll_seconds=poll_seconds,
                                     shutdown_grace_seconds=shutdown_grace_seconds,
                                     listen_dsn=normalize_dsn(listen_dsn) if listen_dsn else None,
                                     poll_only=True if poll_only else None)
        app = load_app(app_path)
        app.settings = settings
        if dsn:
            app._dsn = normalize_dsn(dsn)
        elif app._dsn is None:
            app._dsn = resolve(None)
    except PgqueueError as exc:
        fail(str(exc))
    if processes > 1:
        from pgqueue._worker.supervisor import Supervisor

        argv = [sys.executable, "-m", "pgqueue", "worker", "--app", app_path, "--concurrency", str(concurrency)]
        for name in queues or []:
            argv += ["--queue", name]
        if with_scheduler:
            argv.append("--with-scheduler")
        from pgqueue.cli._logging import child_environment

        os.environ["PGQUEUE_DSN"] = app.dsn  # children read it from the environment, never from argv
        os.environ.update(child_environment())
        os.environ["PGQUEUE_LEASE_SECONDS"] = str(settings.lease_seconds)
        os.environ["PGQUEUE_POLL_SECONDS"] = str(settings.poll_seconds)
        os.environ["PGQUEUE_SHUTDOWN_GRACE_SECONDS"] = str(settings.shutdown_grace_seconds)
        os.environ["PGQUEUE_POLL_ONLY"] = "1" if settings.poll_only else "0"
        if settings.listen_dsn:
            os.environ["PGQUEUE_LISTEN_DSN"] = settings.listen_dsn
        raise typer.Exit(Supervisor(argv, processes, settings.shutdown_grace_seconds).run())

    from pgqueue._worker.supervisor import watch_parent
    from pgqueue.worker import Worker

    watch_parent()
    cron = None
    if with_scheduler:
        from pgqueue._scheduler import start_in_worker

        try:
            cron = start_in_worker(app)
        except PgqueueError as exc:
            fail(str(exc))
    runner = Worker(app, queues=queues, concurrency=concurrency, settings=settings)
    try:
        code = runner.run()
    finally:
        if cron is not None:
            cron.stop()
    if runner.stuck_threads:
        # A handler thread that ignored shutdown would keep the interpreter alive; its job has
        # been released (or will be rescued), so leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)
