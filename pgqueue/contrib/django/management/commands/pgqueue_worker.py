"""``python manage.py pgqueue_worker --app myproject.tasks:app``: a pgqueue worker inside the
Django project (its settings, models and apps loaded), until SIGTERM or Ctrl-C."""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from pgqueue._loader import load_app
from pgqueue.app import App
from pgqueue.contrib.django import database_dsn
from pgqueue.errors import PgqueueError


class Command(BaseCommand):  # type: ignore[misc]  # django is untyped here (no stubs)
    help = "Run a pgqueue worker for an App of this project until SIGTERM or Ctrl-C."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--app", required=True, help="the pgqueue App, as module:attribute")
        parser.add_argument("--queue", action="append", dest="queues", help="a queue to serve (repeat); default all")
        parser.add_argument("--concurrency", type=int, default=10, help="jobs run at once (default 10)")
        parser.add_argument("--database", default="default",
                            help="Django database to use when neither the App nor PGQUEUE_DSN names one")
        parser.add_argument("--until-empty", action="store_true",
                            help="stop when no job is left (scripts and tests) instead of running on")

    def handle(self, *args: Any, **options: Any) -> None:
        from pgqueue.worker import Worker

        try:
            app = load_app(options["app"])
            _close_old_connections_around_jobs(app)
            if app._dsn is None and not os.environ.get("PGQUEUE_DSN"):
                app._dsn = database_dsn(options["database"])
            worker = Worker(app, queues=options["queues"], concurrency=options["concurrency"])
            if options["until_empty"]:
                worker.run_until_empty(install_signal_handlers=True)
            else:
                worker.run()
        except (PgqueueError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"pgqueue worker {worker.worker_id} stopped: {worker.completed} completed, "
                          f"{worker.failed} failed")


def _close_old_connections_around_jobs(app: App) -> None:
    """Give each handler what Django gives each request: ``close_old_connections()`` before and
    after it, in the thread where its ORM calls run. A connection stays open from job to job in
    that thread; without this, one that died (a database restart, a failover, an idle timeout, a
    DBA's ``pg_terminate_backend``) failed every later job there, and ``CONN_MAX_AGE`` was never
    applied. Sync handlers use the ORM in the worker's job threads; async ones through
    ``sync_to_async``, in asgiref's one shared thread."""
    for name, task in list(app.tasks.items()):
        if getattr(task.fn, "_pgqueue_django", False):
            continue
        if task.is_async:
            app.tasks[name] = dataclasses.replace(task, fn=_with_fresh_connections_async(task.fn))
        else:
            app.tasks[name] = dataclasses.replace(task, fn=_with_fresh_connections(task.fn))


def _with_fresh_connections(fn: Callable[..., Any]) -> Callable[..., Any]:
    from django.db import close_old_connections

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        close_old_connections()
        try:
            return fn(*args, **kwargs)
        finally:
            close_old_connections()

    run._pgqueue_django = True  # type: ignore[attr-defined]
    return run


# The async jobs of this process between their cleanups. They all share asgiref's one thread
# (``sync_to_async(thread_sensitive=True)``, the default, outside a request) and so its Django
# connections; process-wide like that thread, hence the lock (a process may run a worker per thread).
_async_jobs = 0
_async_jobs_lock = threading.Lock()


def _with_fresh_connections_async(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    from asgiref.sync import sync_to_async
    from django.db import close_old_connections

    @functools.wraps(fn)
    async def run(*args: Any, **kwargs: Any) -> Any:
        global _async_jobs
        with _async_jobs_lock:
            _async_jobs += 1
            first = _async_jobs == 1
        try:
            if first:
                await sync_to_async(close_old_connections)()
            return await fn(*args, **kwargs)
        finally:
            with _async_jobs_lock:
                _async_jobs -= 1
                last = _async_jobs == 0
            # With another async job running, its state may span its sync_to_async calls (the
            # server-side cursor of QuerySet.aiterator()): closing a sound connection for its age
            # would break it, so only a broken one goes, and CONN_MAX_AGE waits for a quiet moment.
            await sync_to_async(close_old_connections if last else _close_broken_connections)()

    run._pgqueue_django = True  # type: ignore[attr-defined]
    return run


def _close_broken_connections() -> None:
    """``close_old_connections()`` without its CONN_MAX_AGE and autocommit checks: close this
    thread's Django connections that had an error and no longer work, and let
    ``CONN_HEALTH_CHECKS`` check the others again before their next use."""
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        if conn.connection is None:
            continue
        conn.health_check_done = False
        if conn.errors_occurred:
            if conn.is_usable():
                conn.errors_occurred = False
            else:
                conn.close()
