"""pgqueue tasks: the limits tasks declare in code, as workers stored them, with their usage."""

from __future__ import annotations

from typing import Any

import typer

from pgqueue import admin
from pgqueue.cli._admin import open_session
from pgqueue.cli._context import DsnOption, JsonOption
from pgqueue.cli._output import Column, emit

app = typer.Typer(help="Tasks with flow limits (declared on @app.task, stored by workers at start): list.",
                  no_args_is_help=True)


def _usage(used: int | None, limit: object) -> str:
    return "-" if limit is None else f"{used or 0}/{limit}"


TASK_COLUMNS = [
    Column("task", "TASK"),
    Column("concurrency", "CONCURRENCY", justify="right",
           compute=lambda row: _usage(row.get("running"), row.get("concurrency"))),
    Column("rate", "RATE", justify="right", compute=lambda row: _usage(row.get("starts_in_window"), row.get("rate"))),
    Column("group_concurrency", "PER GROUP", justify="right",
           compute=lambda row: "-" if row["group_concurrency"] is None else str(row["group_concurrency"])),
]


@app.command("list")
def list_command(json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """List tasks with limits and their usage now: CONCURRENCY running/limit across all workers,
    RATE starts in the window/limit, PER GROUP the most running jobs per group key.

    Limits are declared in code (``@app.task(concurrency=3, rate="100/m", group_concurrency=1)``)
    and stored in pgqueue.task_limits by every worker at start.
    """
    with open_session(dsn) as conn:
        rows: list[dict[str, Any]] = [info.as_dict() for info in admin.list_task_limits(conn)]
    emit(rows, TASK_COLUMNS, json_output=json_output, empty="no task declares a limit (or no worker has started yet)")
