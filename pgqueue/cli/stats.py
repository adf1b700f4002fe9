"""pgqueue stats and pgqueue health: what the queue is doing, and whether it is well.

Thin layers over :mod:`pgqueue.admin` (``list_queues``, ``list_workers``,
``notification_queue_usage``, ``health``). Both report ``pg_notification_queue_usage()``: pgqueue
wakes workers with NOTIFY, and NOTIFY is transactional: PostgreSQL keeps every committed
notification in one server-wide queue until each listening session has read it. If that queue
fills up (a LISTENing session stuck in a long transaction is the usual cause), every transaction
that sent a NOTIFY fails at COMMIT, so the application's own writes that enqueued a job fail with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import typer

from pgqueue import admin
from pgqueue.cli._admin import open_session
from pgqueue.cli._context import DsnOption, JsonOption, resolve, usage_error
from pgqueue.cli._output import Column, emit, print_json
from pgqueue.cli.queues import QUEUE_COLUMNS, queue_rows
from pgqueue.settings import MAX_DURATION_SECONDS

NOTIFICATION_NOTE = (
    "NOTIFY is transactional: PostgreSQL holds committed notifications in one server-wide queue until every "
    "listening session has read them. If it fills (usually a LISTENing session idle in a long transaction), "
    "every COMMIT that enqueued a job fails, taking the application's own writes with it. Keep it near 0%."
)
UNHEALTHY_EXIT_CODE = 2
DEFAULT_MAX_XACT_AGE = 300.0
_COUNTED = ("waiting", "scheduled", "available", "running", "failed", "cancelled", "completed_last_hour",
            "failed_last_hour")

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
    totals: dict[str, Any] = {key: sum(int(row[key]) for row in queues) for key in _COUNTED}
    ages = [row["lag_seconds"] for row in queues if row["lag_seconds"] is not None]
    totals["lag_seconds"] = max(ages) if ages else None
    return totals


def stats(json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """Show jobs per queue and state (with totals), the workers, and PostgreSQL's notification queue usage.

    The notification queue matters because NOTIFY is transactional: if it fills, every commit that
    enqueues a job fails, including the application's own writes in that transaction.
    """
    with open_session(dsn) as conn:
        queues = queue_rows(admin.list_queues(conn))
        workers = [worker.as_dict() for worker in admin.list_workers(conn)]
        usage = admin.notification_queue_usage(conn)
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
         footer={"name": "total", "paused": "", "concurrency": "", "rate": "", **totals})
    print()
    emit(workers, WORKER_COLUMNS, json_output=False, title=f"workers ({live} live)", empty="no workers registered")
    print()
    print(f"notification queue usage: {usage:.1%} (pg_notification_queue_usage(); health fails at "
          f"{admin.NOTIFICATION_LIMIT:.0%})")
    print(NOTIFICATION_NOTE)


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
    # Bounded above too: the database computes now() - interval from them, which overflows.
    if not 0 < max_age <= MAX_DURATION_SECONDS:
        usage_error(f"--max-age {max_age:g} must be seconds, greater than zero and at most 100 years")
    if not 0 < max_xact_age <= MAX_DURATION_SECONDS:
        usage_error(f"--max-xact-age {max_xact_age:g} must be seconds, greater than zero and at most 100 years")
    report = admin.health(resolve(dsn), max_age=max_age, max_xact_age=max_xact_age)
    if json_output:
        print_json(report.as_dict())
    else:
        for check in report.checks:
            label = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skipped": "skip"}[check.status]
            print(f"{label:<5} {check.name}: {check.detail}")
        print("healthy" if report.healthy else "unhealthy")
    if not report.healthy:
        raise typer.Exit(UNHEALTHY_EXIT_CODE)
