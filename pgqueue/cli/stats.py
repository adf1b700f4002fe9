"""pgqueue stats and pgqueue health: what the queue is doing, and whether it is well.

Both report ``pg_notification_queue_usage()``. pgqueue wakes workers with NOTIFY, and NOTIFY is
transactional: PostgreSQL keeps every committed notification in one server-wide queue until each
listening session has read it. If that queue fills up (a LISTENing session stuck in a long
transaction is the usual cause), every transaction that sent a NOTIFY fails at COMMIT, so the
application's own writes that enqueued a job fail with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pgqueue._db.errors import translate_errors
from pgqueue._db.queues import QueueStore
from pgqueue._db.server import ServerStore
from pgqueue._db.sessions import connect
from pgqueue._db.workers import WorkerStore
from pgqueue.cli._admin import open_session
from pgqueue.cli._context import DsnOption, JsonOption, fail, resolve
from pgqueue.cli._output import Column, emit, format_seconds, print_json
from pgqueue.cli.queues import QUEUE_COLUMNS
from pgqueue.errors import PgqueueError, SchemaNotReady
from pgqueue.jobs import JobState
from pgqueue.settings import redact_dsn

if TYPE_CHECKING:
    from pgqueue._db.types import PsycopgConnection

NOTIFICATION_NOTE = (
    "NOTIFY is transactional: PostgreSQL holds committed notifications in one server-wide queue until every "
    "listening session has read them. If it fills (usually a LISTENing session idle in a long transaction), "
    "every COMMIT that enqueued a job fails, taking the application's own writes with it. Keep it near 0%."
)
NOTIFICATION_LIMIT = 0.5
UNHEALTHY_EXIT_CODE = 2
DEFAULT_MAX_XACT_AGE = 300.0

WORKER_COLUMNS = [
    Column("id", "ID"),
    Column("hostname", "HOST"),
    Column("pid", "PID", justify="right"),
    Column("queues", "QUEUES", compute=lambda row: ", ".join(row["queues"]) or "(all)"),
    Column("concurrency", "CONCURRENCY", justify="right"),
    Column("started_at", "STARTED AT"),
    Column("heartbeat_at", "LAST HEARTBEAT"),
    Column("alive", "ALIVE"),
]


def _totals(queues: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {str(state): sum(int(row[str(state)]) for row in queues) for state in JobState}
    ages = [row["oldest_available_seconds"] for row in queues if row["oldest_available_seconds"] is not None]
    totals["oldest_available_seconds"] = max(ages) if ages else None
    return totals


def stats(json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """Show jobs per queue and state (with totals), the workers, and PostgreSQL's notification queue usage.

    The notification queue matters because NOTIFY is transactional: if it fills, every commit that
    enqueues a job fails, including the application's own writes in that transaction.
    """
    with open_session(dsn) as conn:
        queues = QueueStore(conn).queue_stats()
        workers = WorkerStore(conn).list_workers()
        usage = ServerStore(conn).notification_queue_usage()
    totals = _totals(queues)
    live = sum(1 for worker in workers if worker["alive"])
    if json_output:
        print_json({
            "queues": queues, "totals": totals, "workers": workers, "live_workers": live,
            "notification_queue_usage": usage, "notification_queue_note": NOTIFICATION_NOTE,
        })
        return
    emit(queues, QUEUE_COLUMNS, json_output=False, title="jobs per queue and state",
         empty="no queues yet (a queue appears with its first job)",
         footer={"queue": "total", "paused": "", **totals})
    print()
    emit(workers, WORKER_COLUMNS, json_output=False, title=f"workers ({live} live)", empty="no workers registered")
    print()
    print(f"notification queue usage: {usage:.1%} (pg_notification_queue_usage(); health fails at "
          f"{NOTIFICATION_LIMIT:.0%})")
    print(NOTIFICATION_NOTE)


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail | skipped (only fail makes health unhealthy)
    detail: str


def _backlog_check(conn: PsycopgConnection, max_age: float) -> Check:
    queues = QueueStore(conn).queue_stats()
    workers = [w for w in WorkerStore(conn).list_workers() if w["alive"]]
    oldest: float | None = None
    stranded: list[str] = []
    paused: list[str] = []
    for row in queues:
        age = row["oldest_available_seconds"]
        if age is None:
            continue
        if row["paused"]:  # its backlog waits on purpose
            paused.append(repr(row["queue"]))
            continue
        oldest = age if oldest is None else max(oldest, age)
        served = any(not w["queues"] or row["queue"] in w["queues"] for w in workers)
        if age > max_age and not served:
            stranded.append(f"{row['queue']!r} (oldest waiting {format_seconds(age)})")
    if stranded:
        return Check("workers", "fail", f"jobs available for over {format_seconds(max_age)} and no live worker "
                                        f"serves their queue: {', '.join(stranded)}")
    waiting = "no job available" if oldest is None else f"oldest available job waiting {format_seconds(oldest)}"
    if paused:
        waiting += f" (paused queues not counted: {', '.join(paused)})"
    return Check("workers", "ok", f"{len(workers)} live worker{'' if len(workers) == 1 else 's'}; {waiting}")


def _notification_check(usage: float) -> Check:
    detail = f"{usage:.1%} used (limit {NOTIFICATION_LIMIT:.0%})"
    if usage >= NOTIFICATION_LIMIT:
        return Check("notification_queue", "fail", f"{detail}: a LISTENing session may be stuck in a long "
                                                   "transaction; when it is full, every commit that enqueues fails")
    return Check("notification_queue", "ok", detail)


def _long_transaction_check(server: ServerStore, max_xact_age: float) -> Check:
    # A warning, not a failure: pgqueue still works (jobs are claimed and completed), but vacuum
    # cannot remove the dead rows every job leaves behind while the transaction is open, so the
    # jobs table and its indexes bloat and claims slow down the longer it stays. The cure is
    # outside pgqueue (end that session), and restarting workers, which a probe would do, won't help.
    found = server.long_transactions(max_xact_age)
    if not found:
        return Check("long_transactions", "ok", f"no transaction open longer than {format_seconds(max_xact_age)}")
    listed = "; ".join(
        f"pid {row['pid']} open for {format_seconds(row['age_seconds'])} (user {row['user']!r}, application "
        f"{row['application_name']!r}, {row['state']})" for row in found)
    return Check("long_transactions", "warn", f"{len(found)} transaction{'' if len(found) == 1 else 's'} open longer "
                                              f"than {format_seconds(max_xact_age)}: {listed}; while open, vacuum "
                                              "cannot clean pgqueue.jobs and the queue slows as it bloats "
                                              "(end them with pg_terminate_backend(pid))")


def _schema_check(dsn: str) -> Check:
    from pgqueue import _migrate  # alembic and SQLAlchemy: only loaded for this check

    try:
        pending = _migrate.check(dsn)
    except PgqueueError as exc:
        return Check("schema", "fail", str(exc))
    if pending:
        return Check("schema", "fail", f"pending migrations: {' '.join(pending)} (run `pgqueue migrate`)")
    return Check("schema", "ok", "at head, no pending migrations")


def _run_checks(target: str, max_age: float, max_xact_age: float = DEFAULT_MAX_XACT_AGE) -> list[Check]:
    try:
        conn = connect(target)
    except PgqueueError as exc:
        skipped = [Check(name, "skipped", "database unreachable")
                   for name in ("schema", "workers", "notification_queue", "long_transactions")]
        return [Check("database", "fail", str(exc)), *skipped]
    with translate_errors(), conn:
        server = ServerStore(conn)
        read_only = server.read_only_reason()
        if read_only:
            database = Check("database", "fail", f"{redact_dsn(target)} is read-only ({read_only}): workers can "
                                                 "neither claim nor finish jobs, and every enqueue fails")
        else:
            database = Check("database", "ok", f"reachable at {redact_dsn(target)}")
        checks = [database, _schema_check(target)]
        try:
            checks.append(_backlog_check(conn, max_age))
        except SchemaNotReady:
            conn.rollback()
            checks.append(Check("workers", "skipped", "the pgqueue schema is missing"))
        checks.append(_notification_check(server.notification_queue_usage()))
        checks.append(_long_transaction_check(server, max_xact_age))
    return checks


def health(
    max_age: Annotated[
        float, typer.Option("--max-age", help="Seconds a job may wait as available with no live worker for its queue.")
    ] = 300.0,
    max_xact_age: Annotated[
        float, typer.Option("--max-xact-age", help="Warn about transactions open longer than this many seconds.")
    ] = DEFAULT_MAX_XACT_AGE,
    json_output: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Check that pgqueue is healthy; exit 0 if so, 2 if not (for probes and monitoring).

    Checks: the database is reachable and accepts writes (not read-only); the schema is at the newest
    migration; every queue with a job available for more than --max-age seconds has a live worker
    serving it (paused queues excepted); PostgreSQL's notification queue is under 50% full (if it
    fills, commits that enqueue jobs fail).

    Warns (WARN line, exit status unchanged) about transactions open in the database for more than
    --max-xact-age seconds, naming each one's pid and age: they keep vacuum from cleaning up finished
    jobs, so the queue slows down, but it keeps working.
    """
    if not max_age > 0:
        fail(f"--max-age {max_age} must be greater than zero")
    if not max_xact_age > 0:
        fail(f"--max-xact-age {max_xact_age} must be greater than zero")
    checks = _run_checks(resolve(dsn), max_age, max_xact_age)
    healthy = all(check.status != "fail" for check in checks)
    if json_output:
        print_json({"healthy": healthy, "checks": [asdict(check) for check in checks]})
    else:
        for check in checks:
            label = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skipped": "skip"}[check.status]
            print(f"{label:<5} {check.name}: {check.detail}")
        print("healthy" if healthy else "unhealthy")
    if not healthy:
        raise typer.Exit(UNHEALTHY_EXIT_CODE)
