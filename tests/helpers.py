"""Small helpers shared by the test suites."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from pgqueue._db.databases import drop_database, with_database
from pgqueue.errors import PgqueueError

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent


def _describe(predicate: object, message: str | None) -> str:
    return message or getattr(predicate, "__qualname__", None) or repr(predicate)


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
               message: str | None = None) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that value.

    Use it instead of ``sleep(); assert`` whenever a test waits for another connection, thread or
    process. The predicate is always tried once more after the deadline, so a slow machine only
    fails when the condition is really unmet.

    Raises:
        AssertionError: still falsy after ``timeout`` seconds (the message names the predicate).

    Example:
        >>> wait_until(lambda: 1 + 1, timeout=0.1)
        2
    """
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {_describe(predicate, message)}"
                                 f" (last value: {last!r})")
        time.sleep(interval)


# The same signature as wait_until; the deadline is checked between polls, not by cancellation.
async def wait_until_async(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = 10.0,  # noqa: ASYNC109
    interval: float = 0.05,
    message: str | None = None,
) -> T:
    """The async twin of :func:`wait_until`: awaits ``predicate()`` and sleeps with ``asyncio.sleep``."""
    deadline = time.monotonic() + timeout
    while True:
        last = await predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {_describe(predicate, message)}"
                                 f" (last value: {last!r})")
        await asyncio.sleep(interval)


@contextmanager
def admin_connection(server_dsn: str) -> Iterator[psycopg.Connection[TupleRow]]:
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        yield admin


class DatabaseDropper:
    """Drops scratch databases on a thread of its own, so a test's teardown need not wait.

    Up to PostgreSQL 15, DROP DATABASE forces an immediate checkpoint: 0.3-0.8 s while the suite
    runs, against 30-100 ms for the CREATE DATABASE ... TEMPLATE before it. Every test with a
    database of its own paid that on the critical path. :meth:`close` (at the end of the pytest
    session, see tests/conftest.py) waits for the drops still queued and raises the first error.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()

    def drop(self, server_dsn: str, name: str) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="database-dropper", daemon=True)
                self._thread.start()
        self._queue.put((server_dsn, name))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                drop_database(*item)
            except (PgqueueError, psycopg.Error) as exc:  # reported by close()
                self._errors.append(exc)

    def close(self) -> None:
        """Wait for every queued drop; raise the first that failed."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()
        if self._errors:
            raise self._errors[0]


#: The suite's dropper; tests/conftest.py closes it when the session ends.
DROPPER = DatabaseDropper()


@contextmanager
def scratch_database(server_dsn: str, template: str) -> Iterator[str]:
    """Create ``pgq_test_<random>`` from ``template``, yield its DSN; it is dropped afterwards, by
    :data:`DROPPER` in the background."""
    name = f"pgq_test_{uuid.uuid4().hex[:16]}"
    with admin_connection(server_dsn) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    try:
        yield with_database(server_dsn, name)
    finally:
        DROPPER.drop(server_dsn, name)


class ProcessGroups:
    """Subprocesses a test starts, each in a session of its own, with stdout/stderr in log files.

    :meth:`kill_all` SIGKILLs every whole process group (a supervisor's children too, even when the
    supervisor is already gone) and closes the logs: call it in the fixture's teardown.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self._files: list[IO[bytes]] = []

    def start(self, argv: Sequence[str], *, cwd: Path, env: dict[str, str],
              name: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
        stdout_path = self.log_dir / f"{name}.stdout"
        stderr_path = self.log_dir / f"{name}.stderr"
        stdout, stderr = stdout_path.open("wb"), stderr_path.open("wb")
        self._files += [stdout, stderr]
        proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=stdout, stderr=stderr, start_new_session=True)
        self.procs.append(proc)
        return proc, stdout_path, stderr_path

    def kill_all(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for handle in self._files:
            handle.close()


@contextmanager
def analyzed_backlog(server_dsn: str, template: str, jobs: int) -> Iterator[str]:
    """A scratch database holding ``jobs`` claimable jobs in one queue, analyzed while none ran
    (the statistics a busy queue's autovacuum often takes): the DSN, the database dropped after."""
    with scratch_database(server_dsn, template) as database_dsn:
        with psycopg.connect(database_dsn, autocommit=True) as setup:
            setup.execute("INSERT INTO pgqueue.jobs (task, queue, state, args)"
                          " SELECT 'todo', 'default', 'available', '{}' FROM generate_series(1, %s)", [jobs])
            setup.execute("ANALYZE pgqueue.jobs")
        yield database_dsn


def empty_tables(dsn: str, *tables: str) -> None:
    """TRUNCATE ``tables`` (restarting their identities) between tests sharing one database.

    pgqueue.job_events refuses TRUNCATE (an append-only trail), so the reset runs as a replica
    session, which skips the guard triggers (tests connect as a superuser); the audit seals go too,
    since they describe the rows removed.
    """
    targets = [*tables, "pgqueue.audit_seals"] if "pgqueue.job_events" in tables else list(tables)
    if "pgqueue.jobs" in tables:  # the dependency edges reference jobs (migration 0010)
        targets.append("pgqueue.job_dependencies")
    statement = sql.SQL("TRUNCATE {} RESTART IDENTITY").format(
        sql.SQL(", ").join(sql.Identifier(*name.split(".")) for name in targets))
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute("SET session_replication_role = replica")
        setup.execute(statement)


def _pg_literal(value: object) -> str:
    """``value`` as PostgreSQL text input (arrays as '{...}'), for an untyped literal."""
    if isinstance(value, (list, tuple)):
        items = ("NULL" if v is None else '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in value)
        return "{" + ",".join(items) + "}"
    return str(value)


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, depth first."""
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def cached_plan(conn: psycopg.Connection[TupleRow], query: str, params: dict[str, Any], *,
                generic: bool) -> list[dict[str, Any]]:
    """The nodes of the plan PostgreSQL runs for ``query`` as a prepared statement (what the worker's
    sessions execute): its generic plan (no parameter values) or a custom one for ``params``.

    Prepares with psycopg (named placeholders become $n in order of first appearance), then
    EXPLAINs an EXECUTE of that statement with the values as untyped literals.
    """
    conn.execute(f"SET plan_cache_mode TO {'force_generic_plan' if generic else 'force_custom_plan'}")
    conn.execute(query, params, prepare=True)
    placeholder = re.compile(r"%\((\w+)\)[sbt]")
    order = list(dict.fromkeys(placeholder.findall(query)))
    text = placeholder.sub(lambda m: f"${order.index(m.group(1)) + 1}", query).replace("%%", "%")
    row = conn.execute("SELECT name FROM pg_prepared_statements WHERE statement = %s", [text]).fetchone()
    assert row is not None, "the prepared statement was not found"
    values = sql.SQL(", ").join(sql.Literal(_pg_literal(params[name])) for name in order)
    statement = sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE {}({})").format(sql.Identifier(row[0]), values)
    explained = conn.execute(statement).fetchone()
    assert explained is not None
    return list(plan_nodes(explained[0][0]["Plan"]))


def postgres_programs() -> tuple[Path, str | None]:
    """Where PostgreSQL's programs (psql, initdb, pg_ctl, pg_basebackup) are, and as root the user
    that must run the server ones: the system PostgreSQL's when it is installed, else the embedded
    package's, which every machine that can run the tests has (as root, the copy its service user
    can reach, under the tests' PGQUEUE_HOME).
    """
    import glob

    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if all(os.access(f"{bindir}/{p}", os.X_OK) for p in ("psql", "initdb", "pg_basebackup", "pg_ctl")):
            return Path(bindir), "postgres" if os.geteuid() == 0 else None
    from pgqueue import _embedded

    account = _embedded._service_account(create=True)
    layout = _embedded._layout(Path(os.environ["PGQUEUE_HOME"]))
    install = _embedded._reachable_install(layout, _embedded._package_install(), account)
    return install / "bin", account.name if account is not None else None


def psql() -> str:
    """The psql program: the one on PATH, else :func:`postgres_programs`'."""
    import shutil

    return shutil.which("psql") or str(postgres_programs()[0] / "psql")


def sqlalchemy_form(dsn: str) -> str:
    """``dsn`` (a URL or ``key=value`` conninfo) written as SQLAlchemy's ``postgresql+psycopg://`` URL,
    the other form the contract accepts wherever a DSN is taken."""
    from urllib.parse import quote, urlencode

    params = psycopg.conninfo.conninfo_to_dict(dsn)
    query = urlencode({key: value for key, value in params.items() if key not in ("user", "dbname")})
    return f"postgresql+psycopg://{quote(str(params.get('user', '')))}@/{quote(str(params['dbname']))}?{query}"
