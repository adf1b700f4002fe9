"""pgqueue worker: run jobs until SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated

import typer

from pgqueue.cli._context import DsnOption, checking_options, fail, resolve, usage_error
from pgqueue.cli._startup import resume_gc
from pgqueue.errors import PgqueueError
from pgqueue.settings import Settings, normalize_dsn, parse_prefetch

if TYPE_CHECKING:
    from pgqueue.app import App
    from pgqueue.metrics import Metrics

AppOption = Annotated[str, typer.Option("--app", help="Your App, as 'package.module:app'.")]


def worker(
    app_path: AppOption,
    queue: Annotated[
        list[str] | None, typer.Option("--queue", "-q", help=(
            "Queue to serve (repeatable; default all). NAME=N gives it N slots of its own in each process; "
            "bare names share --concurrency."))] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, max=1000, help="Jobs at once per process.")] = 10,
    processes: Annotated[int, typer.Option("--processes", "-p", min=1, max=64, help="Worker processes.")] = 1,
    lease_seconds: Annotated[
        float | None, typer.Option(envvar="PGQUEUE_LEASE_SECONDS", help="Lease without heartbeat.")] = None,
    poll_seconds: Annotated[
        float | None, typer.Option(envvar="PGQUEUE_POLL_SECONDS", help="Fallback poll interval.")] = None,
    shutdown_grace_seconds: Annotated[
        float | None, typer.Option(envvar="PGQUEUE_SHUTDOWN_GRACE_SECONDS",
                                   help="SIGTERM grace period (0: release running jobs at once).")] = None,
    with_scheduler: Annotated[bool, typer.Option(
        "--with-scheduler", help="Also run the cron scheduler in this process (syncs the app's schedules).")] = False,
    listen_dsn: Annotated[str | None, typer.Option(
        envvar="PGQUEUE_LISTEN_DSN", show_envvar=False,
        help="Direct PostgreSQL DSN for LISTEN only, when --dsn goes through PgBouncer (transaction pooling).")] = None,
    poll_only: Annotated[bool, typer.Option(
        "--poll-only", envvar="PGQUEUE_POLL_ONLY", show_envvar=False,
        help="Never LISTEN: find jobs by polling every --poll-seconds (for PgBouncer without a direct DSN).")] = False,
    max_result_bytes: Annotated[int | None, typer.Option(
        envvar="PGQUEUE_MAX_RESULT_BYTES", show_envvar=False, min=1,
        help="Largest handler result stored, in bytes of JSON (default 1 MiB); a larger one fails the job.")] = None,
    prefetch: Annotated[str | None, typer.Option(
        "--prefetch", metavar="auto|N", show_envvar=False, envvar="PGQUEUE_PREFETCH",
        help="Jobs claimed ahead of free slots, at most (default auto: the slots, at least 32; 0: off). "
             "Only what the slots finish within 20 ms is ever held.")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", min=1, max=65535, metavar="PORT",
        help="Serve Prometheus metrics at http://HOST:PORT/metrics (needs pgqueue[web]); with --processes N, "
             "process i listens on PORT+i.")] = None,
    metrics_host: Annotated[str, typer.Option(
        "--metrics-host", envvar="PGQUEUE_METRICS_HOST", show_envvar=False,
        help="Address the metrics port listens on (it has no auth: loopback unless you choose otherwise, e.g. "
             "0.0.0.0 for Prometheus to scrape a container).")] = "127.0.0.1",
    dsn: DsnOption = None,
) -> None:
    """Run workers until SIGTERM/SIGINT: stop claiming, finish running jobs within the grace
    period, release the rest."""
    # Here, not at the top: `pgqueue worker --help` then never loads the driver or the app's code.
    from pgqueue._worker.pools import build_pools

    try:
        queues = list(queue) if queue else None
        with checking_options():
            try:
                build_pools(queues, concurrency)
            except ValueError as exc:
                usage_error(str(exc))
            for name, value in (("--lease-seconds", lease_seconds), ("--poll-seconds", poll_seconds)):
                if value is not None and not 0 < value < math.inf:  # nan and inf parse as floats
                    usage_error(f"{name} {value} must be greater than zero (and finite)")
            # 0 is a grace too: SIGTERM releases the running jobs at once (a preStop hook drained them).
            if shutdown_grace_seconds is not None and not 0 <= shutdown_grace_seconds < math.inf:
                usage_error(f"--shutdown-grace-seconds {shutdown_grace_seconds} must be zero or more (and finite)")
            prefetch_cap = parse_prefetch(prefetch) if prefetch is not None else None
            if metrics_port is not None and metrics_port + processes - 1 > 65535:
                usage_error(f"--metrics-port {metrics_port} with --processes {processes} needs ports up to "
                            f"{metrics_port + processes - 1}; the highest is 65535")
        settings = Settings.from_env(lease_seconds=lease_seconds, poll_seconds=poll_seconds,
                                     shutdown_grace_seconds=shutdown_grace_seconds,
                                     listen_dsn=normalize_dsn(listen_dsn) if listen_dsn else None,
                                     poll_only=True if poll_only else None, max_result_bytes=max_result_bytes)
        if prefetch is not None:
            settings = replace(settings, prefetch=prefetch_cap)
        if metrics_port is not None:
            _check_metrics_extra()
        # The worker's own code first, then the app: from the app's import on, only the database
        # set-up and the first claim stand between it and the first job. A supervisor's children
        # are forks of it (see pgqueue._worker.supervisor): they then import nothing of pgqueue's.
        _import_worker_modules(with_scheduler=with_scheduler, metrics=metrics_port is not None)
        resume_gc()  # before the app's code runs, and before any fork (see pgqueue.cli._startup)
        # A supervisor never imports the app itself (see pgqueue._worker.supervisor): its children each do.
        if processes == 1:
            with _sigterm_exits_while_loading():
                app: App | None = _load_app(app_path, settings, dsn)
        else:
            app = None
    except PgqueueError as exc:
        fail(str(exc))
    if app is None:
        from pgqueue._worker.supervisor import Handshake, Supervisor, fork_hazards

        argv = [sys.executable, "-m", "pgqueue", "worker", "--app", app_path, "--concurrency", str(concurrency)]
        for name in queues or []:
            argv += ["--queue", name]
        if with_scheduler:
            argv.append("--with-scheduler")
        if metrics_port is not None:  # each child adds its slot (PGQUEUE_WORKER_SLOT) to the port
            argv += ["--metrics-port", str(metrics_port), "--metrics-host", metrics_host]
        from pgqueue.cli._logging import child_environment

        handshake: Handshake | None = None
        if not fork_hazards():
            # The supervisor never imports the app (see pgqueue._worker.supervisor). The first
            # child loads it before the others are forked, and tells the DSN it resolved: a broken
            # --app (or database setting) fails once, in that child, and the DSN is resolved once
            # (the embedded server's notice is printed once).
            handshake = Handshake(on_message=_export_dsn)
        else:
            _export_dsn(_load_app(app_path, settings, dsn).dsn)
        os.environ.update(child_environment())
        os.environ["PGQUEUE_LEASE_SECONDS"] = str(settings.lease_seconds)
        os.environ["PGQUEUE_POLL_SECONDS"] = str(settings.poll_seconds)
        os.environ["PGQUEUE_SHUTDOWN_GRACE_SECONDS"] = str(settings.shutdown_grace_seconds)
        os.environ["PGQUEUE_POLL_ONLY"] = "1" if settings.poll_only else "0"
        os.environ["PGQUEUE_MAX_RESULT_BYTES"] = str(settings.max_result_bytes)
        os.environ["PGQUEUE_PREFETCH"] = "auto" if settings.prefetch is None else str(settings.prefetch)
        if settings.listen_dsn:
            os.environ["PGQUEUE_LISTEN_DSN"] = settings.listen_dsn

        def child() -> int:
            from pgqueue.cli.main import run_guarded

            def start() -> int:
                told = handshake.message if handshake is not None else None
                app = _load_app(app_path, settings, told or dsn)
                _export_dsn(app.dsn)
                if handshake is not None:
                    handshake.tell(app.dsn)  # a no-op in any child but the first
                return _run_worker(app, settings, queues, concurrency, with_scheduler=with_scheduler,
                                   metrics_port=metrics_port, metrics_host=metrics_host)

            return run_guarded(start)

        raise typer.Exit(Supervisor(argv, processes, settings.shutdown_grace_seconds,
                                    target=child if handshake is not None else None, handshake=handshake).run())
    raise typer.Exit(_run_worker(app, settings, queues, concurrency, with_scheduler=with_scheduler,
                                 metrics_port=metrics_port, metrics_host=metrics_host))


def _load_app(app_path: str, settings: Settings, dsn: str | None) -> App:
    """The worker's app, with the CLI's settings and its database: ``dsn``, else the app's own,
    else the environment's or the embedded server."""
    from pgqueue._db.sessions import check_dsn
    from pgqueue._loader import load_app

    app = load_app(app_path)
    app.settings = settings
    if dsn:
        app._dsn = normalize_dsn(dsn)
    elif app._dsn is None:
        app._dsn = resolve(None)
    check_dsn(app.dsn)
    return app


@contextlib.contextmanager
def _sigterm_exits_while_loading() -> Iterator[None]:
    """SIGTERM while the app is imported (a slow framework set-up) ends the command at once with
    exit 0, as it does under ``--processes``, rather than killing it (143) without a word. Nothing
    has been claimed yet; the worker's own handlers take over when it starts."""

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is stop:  # the app may have installed its own meanwhile
            signal.signal(signal.SIGTERM, previous)


def _export_dsn(dsn: str) -> None:
    # Children started afresh (when forking is unsafe) read it from the environment, never from argv.
    os.environ["PGQUEUE_DSN"] = dsn


def _import_worker_modules(*, with_scheduler: bool, metrics: bool) -> None:
    """Import what :func:`_load_app` and :func:`_run_worker` run, so that they import nothing of
    pgqueue's later (a supervisor's children would each import it again after their fork)."""
    import pgqueue._loader
    import pgqueue._worker.children
    import pgqueue._worker.supervisor
    import pgqueue.worker

    if with_scheduler:
        import pgqueue._scheduler
    if metrics:
        import pgqueue.metrics  # noqa: F401


def _run_worker(app: App, settings: Settings, queues: list[str] | None, concurrency: int, *, with_scheduler: bool,
                metrics_port: int | None, metrics_host: str) -> int:
    """This process's worker, alone or as a supervisor's child, until it stops; its exit code."""
    from pgqueue._worker.children import contain_children, end_children
    from pgqueue._worker.supervisor import watch_parent
    from pgqueue.worker import Worker

    watch_parent()
    contain_children()
    cron = None
    if with_scheduler:
        from pgqueue._scheduler import start_in_worker

        try:
            cron = start_in_worker(app)
        except PgqueueError as exc:
            fail(str(exc))
    metrics = _serve_metrics(metrics_port, metrics_host, app.dsn) if metrics_port is not None else None
    runner = Worker(app, queues=queues, concurrency=concurrency, settings=settings, metrics=metrics)
    # What the finally below does, for a worker whose blocked event loop never lets run() return:
    # its shutdown watchdog releases the jobs and ends the process instead.
    runner._loop.exit_hooks.append(end_children)
    if cron is not None:
        runner._loop.exit_hooks.append(functools.partial(cron.stop, timeout=2.0))
    try:
        code = runner.run()
    finally:
        if cron is not None:
            cron.stop()
        end_children()
    if runner.stuck_threads:
        # A handler thread that ignored shutdown would keep the interpreter alive; its job has
        # been released (or will be rescued), so leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _check_metrics_extra() -> None:
    """Before anything starts: the web extra is installed."""
    try:
        import prometheus_client  # noqa: F401 - only checks the web extra is there
    except ImportError:
        fail("--metrics-port needs prometheus-client: pip install 'pgqueue[web]'")


def _serve_metrics(base_port: int, host: str, dsn: str) -> Metrics:
    """This process's metrics endpoint: ``base_port`` plus its slot under a supervisor (0 alone)."""
    from pgqueue._worker.supervisor import PARENT_ENV, SLOT_ENV
    from pgqueue.metrics import start_worker_metrics  # prometheus-client: only with --metrics-port

    port = base_port + (int(os.environ.get(SLOT_ENV, "0")) if os.environ.get(PARENT_ENV) else 0)
    try:
        return start_worker_metrics(port, dsn, host=host)
    except OSError as exc:
        fail(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}")
