"""pgqueue jobs list|show|retry|cancel|delete: inspect and manage individual jobs.

A thin layer over :mod:`pgqueue.admin`: every change is written with its ``pgqueue.job_events``
row (actor: the OS user, source ``cli``) in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer

from pgqueue import admin
from pgqueue._humanize import printable
from pgqueue._payload import check_queue_name
from pgqueue.cli._admin import SOURCE, actor, open_session, parse_job_id, parse_state
from pgqueue.cli._context import DsnOption, JsonOption, checking_options, usage_error
from pgqueue.cli._output import Column, emit, emit_message, emit_record, format_value, print_json
from pgqueue.errors import InvalidFilter

app = typer.Typer(help="Inspect and manage jobs: list, show, retry, cancel, delete.", no_args_is_help=True)

JobIdArgument = Annotated[str, typer.Argument(metavar="ID", help="The job's id.", show_default=False)]
_MAX_LIMIT = 10_000


def _attempts(row: Mapping[str, Any]) -> str:
    return f"{row['attempt']}/{row['max_attempts']}"


def _progress(row: Mapping[str, Any]) -> str:
    # An encrypted job's note exists only as ciphertext: say so, as for its result.
    encrypted = row.get("progress_note_encrypted")
    if row.get("progress") is None:
        return "(encrypted)" if encrypted else format_value(row.get("progress_note"))
    text = f"{row['progress']:g}%"
    if encrypted:
        return f"{text} (note encrypted)"
    return f"{text} ({row['progress_note']})" if row.get("progress_note") else text


def _args(row: Mapping[str, Any]) -> str:
    # args are NULL only for encrypted jobs: the plaintext never reaches the database.
    return "(encrypted)" if row.get("args_encrypted") or row.get("args") is None else format_value(row["args"])


def _result(row: Mapping[str, Any]) -> str:
    return "(encrypted)" if row.get("result_encrypted") else format_value(row.get("result"))


def _error(row: Mapping[str, Any]) -> str:
    value = row.get("last_error")
    if row.get("error_encrypted") and isinstance(value, Mapping) and value.get("encrypted"):
        # Only the type is stored in plaintext; the message and traceback are ciphertext.
        return f"{value.get('type') or 'error'}: (encrypted)"
    return _error_summary(value)


def _error_summary(value: Any) -> str:
    if not isinstance(value, Mapping):
        return format_value(value)
    kind, message = value.get("type"), value.get("message")
    if kind and message:
        return f"{kind}: {message}"
    return str(kind or message or format_value(dict(value)))


LIST_COLUMNS = [
    Column("id", "ID", justify="right"),
    Column("task", "TASK"),
    Column("queue", "QUEUE"),
    Column("state", "STATE"),
    Column("priority", "PRIORITY", justify="right"),
    Column("attempt", "ATTEMPT", compute=_attempts, justify="right"),
    Column("run_at", "RUN AT"),
    Column("enqueued_at", "ENQUEUED AT"),
    Column("finished_at", "FINISHED AT"),
    Column("tags", "TAGS"),
]

SHOW_FIELDS = [
    Column("id", "id"),
    Column("task", "task"),
    Column("queue", "queue"),
    Column("state", "state"),
    Column("priority", "priority"),
    Column("attempt", "attempt", compute=_attempts),
    Column("run_at", "run at"),
    Column("enqueued_at", "enqueued at"),
    Column("started_at", "started at"),
    Column("finished_at", "finished at"),
    Column("worker_id", "worker"),
    Column("unique_key", "unique key"),
    Column("group_key", "group"),
    Column("tags", "tags"),
    Column("progress", "progress", compute=_progress),
    Column("args", "args", compute=_args),
    Column("result", "result", compute=_result),
    Column("last_error", "last error", compute=_error),
]

EVENT_COLUMNS = [
    Column("id", "ID", justify="right"),
    Column("at", "AT"),
    Column("event", "EVENT"),
    Column("from_state", "FROM"),
    Column("to_state", "TO"),
    Column("attempt", "ATTEMPT", justify="right"),
    Column("worker_id", "WORKER"),
    Column("actor", "ACTOR"),
    Column("detail", "DETAIL", fold=True),
]


@app.command("list")
def list_command(
    queue: Annotated[str | None, typer.Option("--queue", "-q", help="Only jobs in this queue.")] = None,
    state: Annotated[str | None, typer.Option("--state", "-s", help="Only jobs in this state.")] = None,
    task: Annotated[str | None, typer.Option("--task", "-t", help="Only jobs of this task.")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Only jobs carrying this tag.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help=f"At most this many (1-{_MAX_LIMIT}).")] = 50,
    json_output: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """List jobs, newest first.

    With --json, prints a JSON array with every column of pgqueue.jobs (as `jobs show`, without events).
    """
    with checking_options():
        if queue is not None:
            check_queue_name(queue)
        wanted = parse_state(state)
        if not 1 <= limit <= _MAX_LIMIT:
            usage_error(f"--limit {limit} must be between 1 and {_MAX_LIMIT}")
    jobs: list[admin.JobRecord] = []
    cursor: str | None = None
    # list_jobs checks --task and --tag before it reads anything (a database error still exits 1).
    with checking_options(InvalidFilter), open_session(dsn) as conn:
        while len(jobs) < limit:
            page = admin.list_jobs(conn, queue=queue, state=wanted, task=task, tag=tag, cursor=cursor,
                                   limit=min(limit - len(jobs), admin.MAX_PAGE_SIZE))
            jobs.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
    emit([job.as_dict() for job in jobs], LIST_COLUMNS, json_output=json_output, empty="no jobs match")


@app.command("show")
def show_command(job_id: JobIdArgument, json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """Show one job: every column (args, result, progress, last error, tags) and its audit trail.

    With --json, prints the job as a JSON object whose "events" key lists its pgqueue.job_events rows.
    """
    wanted = parse_job_id(job_id)
    with open_session(dsn) as conn:
        job = admin.get_job(conn, wanted).as_dict()
        events = [event.as_dict() for event in admin.list_job_events(conn, wanted)]
    if json_output:
        print_json({**job, "events": events})
        return
    emit_record(job, SHOW_FIELDS, title=f"job {wanted}")
    print()
    plural = "" if len(events) == 1 else "s"
    emit(events, EVENT_COLUMNS, json_output=False, title=f"audit trail ({len(events)} event{plural})",
         empty="no audit events (they may have been pruned)")
    error = job.get("last_error")
    if isinstance(error, Mapping) and error.get("traceback"):
        print("\nlast error traceback:")
        print(printable(str(error["traceback"]).rstrip()))


@app.command("retry")
def retry_command(
    job_id: Annotated[
        str | None, typer.Argument(metavar="[ID]", help="The job to retry (failed or cancelled).", show_default=False)
    ] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Retry every failed job (the dead-letter set).")] = False,
    queue: Annotated[str | None, typer.Option("--queue", "-q", help="With --failed: only this queue.")] = None,
    json_output: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Make a failed or cancelled job available again now, or every failed job with --failed.

    A job that used all its attempts gets one more, so a manual retry always runs. With --failed,
    a failed job whose unique_key a live job holds stays failed, and is named (--json: "skipped").
    """
    if (job_id is None) == (not failed):
        usage_error("give a job ID or --failed (not both)")
    if queue is not None and not failed:
        usage_error("--queue only applies to --failed")
    if queue is not None:
        with checking_options():
            check_queue_name(queue)
    if job_id is None:
        with open_session(dsn) as conn:
            retried = admin.retry_failed(conn, queue=queue, actor=actor(), source=SOURCE)
        emit_message(_retried_failed_message(retried, queue), retried.as_dict(), json_output=json_output)
        return
    wanted = parse_job_id(job_id)
    with open_session(dsn) as conn:
        change = admin.retry_job(conn, wanted, actor=actor(), source=SOURCE)
    # 'waiting' when some of its dependencies have not completed (pgqueue.workflows).
    message = (f"retried job {wanted}: it is waiting for its dependencies" if change.state == "waiting"
               else f"retried job {wanted}: it is available again")
    emit_message(message, {"retried": [wanted], "count": 1}, json_output=json_output)


# Ids named in the sentence at most; --json lists them all.
_SHOWN_IDS = 10


def _retried_failed_message(retried: admin.RetriedJobs, queue: str | None) -> str:
    where = f" in queue {queue!r}" if queue else ""
    message = f"retried {len(retried)} failed job{'' if len(retried) == 1 else 's'}{where}"
    skipped = retried.skipped
    if not skipped:
        return message
    ids = ", ".join(str(job_id) for job_id in skipped[:_SHOWN_IDS]) + (", ..." if len(skipped) > _SHOWN_IDS else "")
    return (f"{message}; left {len(skipped)} failed (id{'' if len(skipped) == 1 else 's'} {ids}): a live job "
            "holds their unique_key, retry them once it is done")


@app.command("cancel")
def cancel_command(job_id: JobIdArgument, json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """Cancel a scheduled, available or running job.

    A running job's handler learns it within a second (job.cancelled; an async handler's coroutine
    is cancelled); whatever the attempt still produces is discarded, a transactional task's writes
    roll back, and the job stays cancelled.
    """
    wanted = parse_job_id(job_id)
    with open_session(dsn) as conn:
        change = admin.cancel_job(conn, wanted, actor=actor(), source=SOURCE)
    previous = change.previous_state
    note = "; its worker was told to stop the running attempt" if previous == "running" else ""
    emit_message(f"cancelled job {wanted} (was {previous}){note}",
                 {"id": wanted, "previous_state": previous, "state": "cancelled"}, json_output=json_output)


@app.command("delete")
def delete_command(job_id: JobIdArgument, json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """Delete a job that is not running (its audit trail stays, with a 'deleted' event)."""
    wanted = parse_job_id(job_id)
    with open_session(dsn) as conn:
        admin.delete_job(conn, wanted, actor=actor(), source=SOURCE)
    emit_message(f"deleted job {wanted}", {"id": wanted, "deleted": True}, json_output=json_output)
