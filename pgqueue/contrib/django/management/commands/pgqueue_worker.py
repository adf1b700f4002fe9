"""``python manage.py pgqueue_worker --app myproject.tasks:app``: a pgqueue worker inside the
Django project (its settings, models and apps loaded), until SIGTERM or Ctrl-C."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
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
    """Give each sync handler what Django gives each request: ``close_old_connections()`` before
    and after it. A worker thread keeps its Django connection from job to job; without this, one
    that died (a database restart, an idle timeout) failed every later job of that thread, and
    ``CONN_MAX_AGE`` was never applied. Async handlers reach the ORM through asgiref's threads,
    which are not the worker's."""
    for name, task in list(app.tasks.items()):
        if not task.is_async and not getattr(task.fn, "_pgqueue_django", False):
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
