"""pgqueue schedules list|add|remove|pause|resume: cron schedules managed at run time.

Code schedules (``app.schedule``) are synced by ``pgqueue scheduler``; these commands manage
run-time ones, and can pause, resume or remove either kind. Every change writes a
``pgqueue.job_events`` row (job_id NULL, detail ``{"schedule": ...}``) with the OS user as actor.
Bad input is reported in one line before anything is written.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any

import typer

from pgqueue._cron import DEFAULT_MAX_CATCHUP, MAX_MAX_CATCHUP, MISFIRE_POLICIES, load_timezone
from pgqueue._db.schedules import ScheduleStore
from pgqueue.cli._admin import actor, open_store
from pgqueue.cli._context import DsnOption, JsonOption, checking_options, fail, usage_error
from pgqueue.cli._output import Column, emit, emit_message
from pgqueue.errors import InvalidTimezone, PgqueueError
from pgqueue.schedules import (
    Schedule,
    ScheduleSpec,
    add_schedule,
    check_schedule_name,
    list_schedules,
    pause_schedule,
    remove_schedule,
    resume_schedule,
)
from pgqueue.settings import Settings
from pgqueue.tasks import DEFAULT_QUEUE

app = typer.Typer(
    help="Cron schedules: list, add, remove, pause, resume (code schedules are synced by `pgqueue scheduler`).",
    no_args_is_help=True,
)

NameArgument = Annotated[str, typer.Argument(metavar="NAME", help="The schedule's name.", show_default=False)]


@contextmanager
def _connection(dsn: str | None) -> Iterator[ScheduleStore]:
    try:
        with open_store(dsn, ScheduleStore) as store:
            yield store
    except PgqueueError as exc:
        fail(str(exc))


def describe(schedules: Sequence[Schedule], now: datetime, count: int = 3) -> list[dict[str, Any]]:
    """Schedules as JSON-ready dicts with their next ``count`` fire times (ISO 8601, own time zone)."""
    result = []
    for schedule in schedules:
        zone = _safe_zone(schedule.timezone)
        item = schedule.to_dict()
        item["next_fire_times"] = [t.isoformat() for t in schedule.next_fire_times(now, count)]
        for key in ("next_run_at", "last_run_at", "disabled_at"):
            value = item[key]
            item[key] = value.astimezone(zone).isoformat() if value is not None else None
        for key in ("created_at", "updated_at"):
            item[key] = item[key].isoformat()
        result.append(item)
    return result


def _safe_zone(name: str) -> tzinfo:
    try:
        return load_timezone(name)
    except InvalidTimezone:
        return UTC


def _times(values: Any) -> str:
    return "\n".join(values) if values else "-"


def _local(value: str | None) -> str:
    # ISO 8601 from describe(); a space reads better than "T" in a table.
    return value.replace("T", " ") if value else "-"


def _state(row: Mapping[str, Any]) -> str:
    if row["state"] == "disabled":
        return "disabled (not in code)"
    return str(row["state"])


SCHEDULE_COLUMNS = [
    Column("name", "NAME"),
    Column("cron", "CRON"),
    Column("timezone", "TIME ZONE"),
    Column("task", "TASK"),
    Column("queue", "QUEUE"),
    Column("source", "SOURCE"),
    Column("state", "STATE", compute=_state),
    Column("misfire", "MISFIRE"),
    Column("last_run_at", "LAST RUN", render=_local),
    # fold: a multi-line cell (one fire time per line); otherwise its newlines are escaped as \x0a.
    Column("next_fire_times", "NEXT FIRE TIMES", fold=True, compute=lambda row: _times(
        [_local(t) for t in row["next_fire_times"]])),
]


@app.command("list")
def list_command(json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """List schedules: state, last run and next three fire times, in each schedule's own time zone.

    The state is active, paused, or disabled (a code schedule no longer in the code). With --json,
    a JSON array: every column of pgqueue.schedules plus "state" and "next_fire_times" (ISO 8601
    with the schedule's UTC offset; empty when paused or disabled).
    """
    with _connection(dsn) as store:
        rows = describe(list_schedules(store.conn), store.db_now())
    emit(rows, SCHEDULE_COLUMNS, json_output=json_output,
         empty="no schedules (declare them with app.schedule(...) or add one with `pgqueue schedules add`)")


def _parse_args(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        usage_error(f"--args {raw!r} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")
    if not isinstance(value, dict):
        usage_error(f"--args must be a JSON object such as '{{\"report_id\": 1}}', got {type(value).__name__}")
    return value


def _parse_max_catchup(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        usage_error(f"--max-catchup {raw!r} must be an integer from 1 to {MAX_MAX_CATCHUP}")


@app.command("add")
def add_command(
    name: NameArgument,
    cron: Annotated[str, typer.Option(
        "--cron", help="5 fields (minute hour day month weekday), or 6 with leading seconds: '*/10 * * * * *'.",
        show_default=False)],
    task: Annotated[str, typer.Option("--task", help="Task name each run enqueues.", show_default=False)],
    args: Annotated[str | None, typer.Option("--args", metavar="JSON", help="Task args, a JSON object.")] = None,
    timezone: Annotated[str, typer.Option("--timezone", help="IANA time zone the cron is read in.")] = "UTC",
    queue: Annotated[str, typer.Option("--queue", help="Queue of the jobs.")] = DEFAULT_QUEUE,
    priority: Annotated[str | None, typer.Option(
        "--priority", help="Integer (smaller runs first) or critical/high/normal/low. [default: 100]")] = None,
    misfire: Annotated[str, typer.Option(
        "--misfire", help="Runs missed while no scheduler ran: once (one run), skip (none), all (each).")] = "once",
    max_catchup: Annotated[str, typer.Option(
        "--max-catchup", metavar="N", help="Most runs one scheduler pass inserts for this schedule.")
    ] = str(DEFAULT_MAX_CATCHUP),
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite a run-time schedule of that name.")] = False,
    json_output: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Add a run-time schedule (or replace one with --replace). Its first run is the next fire time."""
    try:
        # The NAME argument names a schedule, as for remove or pause: a bad one exits 1 there too.
        check_schedule_name(name)
        max_payload_bytes = Settings.from_env().max_payload_bytes
    except PgqueueError as exc:
        fail(str(exc))
    if misfire not in MISFIRE_POLICIES:
        usage_error(f"--misfire {misfire!r} must be one of {', '.join(MISFIRE_POLICIES)}")
    with checking_options():  # the options: --cron, --task, --args, --timezone, --queue, --priority, ...
        spec = ScheduleSpec.build(
            name=name, cron=cron, task=task, args=_parse_args(args), timezone=timezone, queue=queue,
            priority=priority, misfire=misfire, max_catchup=_parse_max_catchup(max_catchup),
            max_payload_bytes=max_payload_bytes,
        )
    with _connection(dsn) as store:
        schedule = add_schedule(store.conn, spec, replace=replace, actor=actor())
        [summary] = describe([schedule], store.db_now())
    verb = "replaced" if replace else "added"
    first = _local(summary["next_fire_times"][0]) if summary["next_fire_times"] else "-"
    emit_message(f"{verb} schedule {name!r}: {spec.cron} ({spec.timezone}) -> task {spec.task!r} on queue "
                 f"{spec.queue!r}; first run {first}", summary, json_output=json_output)


@app.command("remove")
def remove_command(name: NameArgument, json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """Remove a schedule. Its fire-time history stays, so no run it inserted is ever inserted again."""
    with _connection(dsn) as store:
        schedule = remove_schedule(store.conn, name, actor=actor())
    if schedule.source == "code":
        print(f"pgqueue: note: {name!r} is defined in code; the next `pgqueue scheduler` start re-creates it "
              "unless it is removed from the code (pause it to stop it for good)", file=sys.stderr)
    emit_message(f"removed schedule {name!r}", {"name": name, "removed": True, "source": schedule.source},
                 json_output=json_output)


@app.command("pause")
def pause_command(name: NameArgument, json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """Pause a schedule: no runs are inserted until it is resumed (none are caught up then)."""
    with _connection(dsn) as store:
        schedule = pause_schedule(store.conn, name, actor=actor())
    emit_message(f"paused schedule {name!r}", {"name": name, "paused": schedule.paused, "state": schedule.state},
                 json_output=json_output)


@app.command("resume")
def resume_command(name: NameArgument, json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """Resume a paused schedule at its next fire time (runs that would have fired while paused are skipped)."""
    with _connection(dsn) as store:
        schedule = resume_schedule(store.conn, name, actor=actor())
        [summary] = describe([schedule], store.db_now())
    if schedule.state == "disabled":
        print(f"pgqueue: note: {name!r} is disabled because it is no longer defined in code; it fires again "
              "only when it is back in the code", file=sys.stderr)
    first = _local(summary["next_fire_times"][0]) if summary["next_fire_times"] else "-"
    emit_message(f"resumed schedule {name!r}; next run {first}", summary, json_output=json_output)
