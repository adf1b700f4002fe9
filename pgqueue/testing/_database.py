"""Scratch databases migrated to pgqueue's head, and what a test does with one."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgqueue import admin
from pgqueue._db.databases import ScratchRun, create_database, drop_database, ensure_template
from pgqueue._db.sessions import open_connection
from pgqueue.settings import normalize_dsn

if TYPE_CHECKING:
    from pgqueue.admin import JobRecord
    from pgqueue.app import App
    from pgqueue.typing import PsycopgConnection

#: The server's DSN for test databases (a role allowed to CREATE DATABASE).
TEST_DSN_ENV = "PGQUEUE_TEST_DSN"
# Jobs listed in a failed assertion's message at most.
_SHOWN = 20
# Serialises template builds across processes (pytest-xdist workers): the bytes of "pgqtestk".
_TEMPLATE_LOCK_KEY = int.from_bytes(b"pgqtestk", "big")
# This process's scratch run per server (see _scratch_run).
_RUNS: dict[str, ScratchRun] = {}
_RUNS_LOCK = threading.Lock()


def server_dsn() -> str:
    """The server test databases are made on: ``PGQUEUE_TEST_DSN``, else the embedded server
    (started on demand under ``PGQUEUE_HOME``). Never ``PGQUEUE_DSN``: tests must not reach the
    application's own database server by accident."""
    configured = os.environ.get(TEST_DSN_ENV)
    if configured:
        return normalize_dsn(configured)
    from pgqueue import _embedded

    return _embedded.ensure_server()


def template_database(server: str) -> str:
    """The name of a template database at pgqueue's migration head on ``server``, built once per
    pgqueue schema version and reused by every later test run."""
    from pgqueue import _migrate

    digest = hashlib.sha256()
    for path in sorted((_migrate.script_location() / "versions").glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    name = f"pgqueue_testing_{digest.hexdigest()[:16]}"
    ensure_template(server, name, _migrate.upgrade, lock_key=_TEMPLATE_LOCK_KEY)
    return name


@dataclass(frozen=True)
class Drained:
    """What :meth:`TestDatabase.drain` ran: attempts completed, and jobs left failed for good."""

    completed: int
    failed: int


@dataclass
class TestDatabase:
    """A fresh database at pgqueue's migration head, for one test.

    Args:
        dsn: the database's DSN.
    """

    __test__ = False  # not a pytest test class, despite its name

    dsn: str
    _bound: list[tuple[App, str | None]] = dataclasses.field(default_factory=list, repr=False)

    def connect(self, *, autocommit: bool = False) -> PsycopgConnection:
        """A new psycopg connection to this database (the caller closes it)."""
        return open_connection(self.dsn, autocommit=autocommit)

    def bind(self, app: App) -> App:
        """Point ``app`` at this database until :meth:`close` (the fixture does it after the test),
        whatever DSN it was built with; returns it.

        Example:
            >>> pgqueue_db.bind(myproject.tasks.app)
        """
        self._bound.append((app, app._dsn))
        app._dsn = self.dsn
        return app

    def drain(self, app: App, *, queues: Sequence[str] | None = None, concurrency: int = 1) -> Drained:
        """Run ``app``'s jobs in this process until none is left, and say how it went.

        "None left" is :meth:`pgqueue.Worker.run_until_empty`'s: nothing available, running or
        due; jobs a handler enqueues are run too, retries waiting out a backoff and jobs
        scheduled in the future are not. The app is bound to this database first.

        Example:
            >>> drained = pgqueue_db.drain(app)
            >>> assert drained.failed == 0
        """
        from pgqueue.worker import Worker

        self.bind(app)
        # Polling stays a fallback in tests too; short, so a missed wake-up costs little.
        settings = dataclasses.replace(app.settings, dsn=self.dsn, poll_seconds=0.1)
        worker = Worker(app, queues=queues, concurrency=concurrency, settings=settings)
        worker.run_until_empty()
        return Drained(completed=worker.completed, failed=worker.failed)

    def enqueued(self, task: str | None = None, *, args: Mapping[str, Any] | None = None,
                 queue: str | None = None, state: str | None = None) -> list[JobRecord]:
        """The jobs in this database, oldest first, that match every filter given.

        ``args`` matches jobs whose args contain these keys with these values (other keys may be
        present too). Encrypted jobs' args are not readable here and never match ``args``.
        """
        found: list[JobRecord] = []
        with self.connect(autocommit=True) as conn:
            cursor: str | None = None
            while True:
                page = admin.list_jobs(conn, task=task, queue=queue, state=state, cursor=cursor,
                                       limit=admin.MAX_PAGE_SIZE)
                found.extend(page.items)
                cursor = page.next_cursor
                if cursor is None:
                    break
        if args is not None:
            wanted = dict(args)
            found = [job for job in found if job.args is not None
                     and all(key in job.args and job.args[key] == value for key, value in wanted.items())]
        return sorted(found, key=lambda job: job.id)

    def assert_enqueued(self, task: str | None = None, *, args: Mapping[str, Any] | None = None,
                        queue: str | None = None, state: str | None = None,
                        count: int | None = None) -> list[JobRecord]:
        """Assert that jobs matching the filters exist (exactly ``count`` of them, if given) and
        return them; the failure message lists what was enqueued instead.

        Example:
            >>> pgqueue_db.assert_enqueued("send-email", args={"to": "a@example.com"}, count=1)
        """
        matching = self.enqueued(task, args=args, queue=queue, state=state)
        if (count is None and not matching) or (count is not None and len(matching) != count):
            wanted = {k: v for k, v in {"task": task, "args": args, "queue": queue, "state": state}.items() if v}
            every = [(job.task, job.queue, job.state, job.args) for job in self.enqueued()]
            shown = f"{every[:_SHOWN]} and {len(every) - _SHOWN} more" if len(every) > _SHOWN else f"{every}"
            expected = f"{count} job(s)" if count is not None else "a job"
            raise AssertionError(f"expected {expected} matching {wanted}, found {len(matching)}; enqueued: {shown}")
        return matching

    def refute_enqueued(self, task: str | None = None, *, args: Mapping[str, Any] | None = None,
                        queue: str | None = None, state: str | None = None) -> None:
        """Assert that no job matches the filters."""
        self.assert_enqueued(task, args=args, queue=queue, state=state, count=0)

    def close(self) -> None:
        """Give bound apps back their own DSN."""
        while self._bound:
            app, previous = self._bound.pop()
            app._dsn = previous


def _scratch_run(server: str) -> ScratchRun:
    """This process's run of test databases on ``server``, started on first use: its marker session
    lives as long as the process, so a test run killed outright (SIGKILL, a CI timeout) leaves
    databases that the next run on the server drops."""
    with _RUNS_LOCK:
        run = _RUNS.get(server)
        if run is None:
            run = ScratchRun(server, "pgqueue_test_")
            run.start()
            _RUNS[server] = run  # only once started: an unmarked run's databases could be swept
        else:
            run.keep_alive()
        return run


@contextlib.contextmanager
def fresh_database(server: str | None = None) -> Iterator[TestDatabase]:
    """A fresh database at pgqueue's head (a copy of the template), dropped afterwards.

    Args:
        server: the server's DSN, ``postgresql://`` or ``postgresql+psycopg://`` (default: :func:`server_dsn`).
    """
    server = normalize_dsn(server) if server else server_dsn()
    template = template_database(server)
    name = f"{_scratch_run(server).name}_{uuid.uuid4().hex[:8]}"
    database = TestDatabase(create_database(server, name, template=template))
    try:
        yield database
    finally:
        database.close()
        drop_database(server, name)
