"""pgqueue queues list|pause|resume|purge|set: per-queue counts and controls, over :mod:`pgqueue.admin`.

Pausing, resuming and setting limits write a ``pgqueue.job_events`` row (job_id NULL, detail
``{"queue": ...}``); purging writes one ``purged`` row per deleted job. The actor is the OS
user, with source ``cli``.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from pgqueue import admin
from pgqueue._humanize import format_seconds, whole_number
from pgqueue._payload import check_queue_name
from pgqueue.cli._admin import SOURCE, actor, open_session, parse_state
from pgqueue.cli._context import DsnOption, JsonOption, checking_options, fail, usage_error
from pgqueue.cli._output import Column, emit, emit_message, format_value
from pgqueue.errors import InvalidQueueLimits
from pgqueue.jobs import JobState

app = typer.Typer(help="Per-queue counts and controls: list, pause, resume, purge, set limits.",
                  no_args_is_help=True)

QueueArgument = Annotated[str, typer.Argument(metavar="QUEUE", help="The queue's name.", show_default=False)]
CreateOption = Annotated[bool, typer.Option(
    "--create", help="Also for a queue with no job and no settings yet (else that is taken for a typo).")]

COUNT_COLUMNS = [Column(state, state.upper(), justify="right")
                 for state in ("waiting", "scheduled", "available", "running", "failed", "cancelled")]

QUEUE_COLUMNS = [
    Column("name", "QUEUE"),
    Column("paused", "PAUSED"),
    *COUNT_COLUMNS,
    Column("completed_last_hour", "DONE 1H", justify="right"),
    Column("failed_last_hour", "FAILED 1H", justify="right"),
    Column("lag_seconds", "LAG", render=format_seconds, justify="right"),
    # Usage against the limit: running / concurrency, starts in the window / rate.
    Column("concurrency", "CONCURRENCY", justify="right",
           compute=lambda row: _usage(row.get("running"), row.get("concurrency"))),
    Column("rate", "RATE", justify="right", compute=lambda row: _usage(row.get("starts_in_window"), row.get("rate"))),
]


def _usage(used: int | None, limit: object) -> str:
    if limit is None or limit == "":  # no limit; "" is the totals row of `pgqueue stats`
        return "-" if limit is None else ""
    return f"{used or 0}/{limit}"


def queue_rows(queues: list[admin.QueueInfo]) -> list[dict[str, Any]]:
    return [queue.as_dict() for queue in queues]


@app.command("list")
def list_command(json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """List queues: paused or not, live and dead-letter jobs per state, the last hour's outcomes,
    lag (how long the oldest available job has waited), and limits with their usage now
    (CONCURRENCY: running/limit; RATE: starts in the window/limit, e.g. 13/20/s).

    Counts read only live and dead-letter jobs (fast on any table size); completed jobs are counted
    over the last hour. Exact all-time totals: SELECT * FROM pgqueue.queue_stats (reads every job).
    """
    with open_session(dsn) as conn:
        rows = queue_rows(admin.list_queues(conn))
    emit(rows, QUEUE_COLUMNS, json_output=json_output, empty="no queues yet (a queue appears with its first job)")


def _set_paused(queue: str, paused: bool, create: bool, json_output: bool, dsn: str | None) -> None:
    check_queue_name(queue)
    with open_session(dsn) as conn:
        if paused:
            admin.pause_queue(conn, queue, actor=actor(), create=create, source=SOURCE)
        else:
            admin.resume_queue(conn, queue, actor=actor(), create=create, source=SOURCE)
    if paused:
        message = f"paused queue {queue!r}: workers stop claiming its jobs; running jobs finish"
    else:
        message = f"resumed queue {queue!r}: workers claim its jobs again"
    emit_message(message, {"queue": queue, "paused": paused}, json_output=json_output)


@app.command("pause")
def pause_command(queue: QueueArgument, create: CreateOption = False, json_output: JsonOption = False,
                  dsn: DsnOption = None) -> None:
    """Pause a queue: workers stop claiming its jobs (enqueueing still works; running jobs finish)."""
    _set_paused(queue, True, create, json_output, dsn)


@app.command("resume")
def resume_command(queue: QueueArgument, create: CreateOption = False, json_output: JsonOption = False,
                   dsn: DsnOption = None) -> None:
    """Resume a paused queue and wake idle workers."""
    _set_paused(queue, False, create, json_output, dsn)


def _purgeable(info: admin.QueueInfo | None, state: str | None, completed: int) -> int:
    if info is None:
        return completed
    counts = {"scheduled": info.scheduled, "available": info.available, "failed": info.failed,
              "cancelled": info.cancelled, "completed": completed}
    return counts[state] if state else sum(counts.values())


@app.command("purge")
def purge_command(
    queue: QueueArgument,
    state: Annotated[
        str | None, typer.Option("--state", "-s", help="Only jobs in this state (default: all but running).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_output: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Delete a queue's jobs (all but running ones, or only --state S). Asks first unless --yes.

    Each deleted job leaves a 'purged' event in pgqueue.job_events.
    """
    check_queue_name(queue)
    if state is not None and state.strip().lower() == JobState.RUNNING:
        usage_error("running jobs cannot be purged: their workers hold them; cancel them first "
                    "(pgqueue jobs cancel ID)")
    wanted = parse_state(state, admin.PURGEABLE_STATES)
    scope = f"{wanted} jobs" if wanted else "jobs"
    if not yes:
        if not sys.stdin.isatty():
            fail(f"refusing to purge queue {queue!r} without confirmation: stdin is not a terminal; pass --yes")
        with open_session(dsn) as conn:
            info = next((q for q in admin.list_queues(conn) if q.name == queue), None)
            completed = (_count_completed(conn, queue) if wanted in (None, "completed") else 0)
        count = _purgeable(info, wanted, completed)
        if count == 0:
            emit_message(f"queue {queue!r} has no {scope} to purge", {"queue": queue, "state": wanted, "purged": 0},
                         json_output=json_output)
            return
        question = f"Delete {count} {scope} from queue {queue!r} (running jobs are kept)? This cannot be undone"
        if not typer.confirm(question, default=False, err=True):
            fail("purge cancelled; nothing was deleted")
    with open_session(dsn) as conn:
        purged = admin.purge_queue(conn, queue, state=wanted, actor=actor(), source=SOURCE)
    emit_message(f"purged {purged} {scope} from queue {queue!r}", {"queue": queue, "state": wanted, "purged": purged},
                 json_output=json_output)


def _count_completed(conn: Any, queue: str) -> int:
    # The confirmation names how many jobs go: completed ones are not in list_queues' counts, so
    # page through them (an operator's one-off question, not a poll).
    total, cursor = 0, None
    while True:
        page = admin.list_jobs(conn, queue=queue, state="completed", cursor=cursor, limit=admin.MAX_PAGE_SIZE)
        total += len(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return total


def _limit_option(raw: str | None, name: str) -> Any:
    if raw is None:
        return admin.UNCHANGED
    if raw.strip().lower() == "none":
        return None
    if name == "concurrency":
        text = raw.strip()
        number = whole_number(text.removeprefix("-"))  # a negative one is left to admin's message
        if number is None:
            usage_error(f"--concurrency {raw!r} must be a whole number >= 1 or 'none'")
        return -number if text.startswith("-") else number
    return raw


@app.command("set")
def set_command(
    queue: QueueArgument,
    concurrency: Annotated[str | None, typer.Option(
        "--concurrency", metavar="N|none", help="At most N of the queue's jobs running at once, across all workers.",
        show_default=False)] = None,
    rate: Annotated[str | None, typer.Option(
        "--rate", metavar="RATE|none", help="At most N starts per period: N/s, N/m, N/h or N/<duration> (100/30s).",
        show_default=False)] = None,
    create: CreateOption = False,
    json_output: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Set a queue's global limits ('none' removes one; a limit not given keeps its value).

    Stored in pgqueue.queues (concurrency, rate_limit, rate_period_seconds) with an audit row.
    """
    if concurrency is None and rate is None:
        usage_error("give --concurrency, --rate or both ('none' removes a limit)")
    check_queue_name(queue)
    # set_queue_limits checks the values before it reads anything (a database error still exits 1).
    with checking_options(InvalidQueueLimits), open_session(dsn) as conn:
        info = admin.set_queue_limits(conn, queue, concurrency=_limit_option(concurrency, "concurrency"),
                                      rate=_limit_option(rate, "rate"), actor=actor(), create=create, source=SOURCE)
    message = (f"queue {queue!r}: concurrency {format_value(info.concurrency) if info.concurrency else 'unlimited'}, "
               f"rate {info.rate or 'unlimited'}")
    emit_message(message, {"queue": queue, "concurrency": info.concurrency, "rate": info.rate,
                           "rate_limit": info.rate_limit, "rate_period_seconds": info.rate_period_seconds},
                 json_output=json_output)
