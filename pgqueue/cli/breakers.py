"""pgqueue breakers list|reset: the circuit breakers of tasks, over :mod:`pgqueue.admin`.

A reset writes a ``breaker_reset`` row in ``pgqueue.job_events`` (job_id NULL, detail
``{"task": ...}``) with the OS user as actor (source ``cli``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer

from pgqueue import admin
from pgqueue._humanize import format_seconds
from pgqueue.cli._admin import SOURCE, actor, open_session
from pgqueue.cli._context import DsnOption, JsonOption
from pgqueue.cli._output import Column, emit, emit_message, format_value

app = typer.Typer(help="Circuit breakers of tasks: list their state, reset one by hand.", no_args_is_help=True)


def _failures(row: Mapping[str, Any]) -> str:
    return f"{row['failures']}/{row['failure_threshold']} in {format_seconds(row['window_seconds'])}"


BREAKER_COLUMNS = [
    Column("task", "TASK"),
    Column("state", "STATE"),
    Column("failures", "FAILURES", compute=_failures, justify="right"),
    Column("cooldown_seconds", "COOLDOWN", render=format_seconds, justify="right"),
    Column("opened_at", "OPENED AT", render=format_value),
    Column("trial_at", "TRIAL AT", render=format_value),
    Column("trial_job_id", "TRIAL JOB", render=format_value, justify="right"),
]


@app.command("list")
def list_command(json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """List every task's circuit breaker: state (closed, open, half_open), failed attempts counted in
    its window, when it opened, and when its half-open trial is due (or which job is the trial)."""
    with open_session(dsn) as conn:
        rows = [breaker.as_dict() for breaker in admin.list_breakers(conn)]
    emit(rows, BREAKER_COLUMNS, json_output=json_output,
         empty="no circuit breakers (a worker writes its tasks' breakers when it starts)")


@app.command("reset")
def reset_command(
    task: Annotated[str, typer.Argument(metavar="TASK", help="The task whose breaker to close.", show_default=False)],
    json_output: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Close a task's circuit breaker now and forget its counted failures; its held jobs are claimed
    again at the workers' next poll."""
    with open_session(dsn) as conn:
        change = admin.reset_breaker(conn, task, actor=actor(), source=SOURCE)
    emit_message(f"reset the circuit breaker of {task!r} (was {change.previous_state}): its jobs run again",
                 change.as_dict(), json_output=json_output)
