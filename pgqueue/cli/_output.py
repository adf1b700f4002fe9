"""One way to print results: rich tables for people, JSON for machines.

Every command describes its output once, as a list of :class:`Column`, and calls :func:`emit`
(lists) or :func:`emit_record` (one object). With ``--json`` the same rows are printed as JSON:
datetimes in ISO 8601, intervals in seconds, every column the query returned (not only the ones
the table shows), so scripts never have to parse a table.

Values are printed as plain text, never as rich markup: a task name or an error message with
``[brackets]`` in it is shown as is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pgqueue._humanize import format_seconds, json_default, printable

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn

# When the output is piped, rich would wrap tables at 80 columns; a pipe has no width, so lay
# rows out in full (columns only grow as wide as their content).
_PIPE_WIDTH = 240


@dataclass(frozen=True)
class Column:
    """One column of a human table: which key of the row, its header, and how to render it."""

    key: str
    header: str
    render: Callable[[Any], str] | None = None
    justify: Literal["left", "right"] = "left"
    # Long free text (errors, args) folds instead of pushing other columns off the screen.
    fold: bool = False
    # For cells drawn from several keys of the row (e.g. "attempt 2 of 5"); wins over key/render.
    compute: Callable[[Mapping[str, Any]], str] | None = None

    def text(self, row: Mapping[str, Any]) -> str:
        if self.compute is not None:
            return printable(self.compute(row), multiline=self.fold)
        value = row.get(self.key)
        # Stored names and text are data anyone with enqueue rights wrote: never raw control characters.
        return printable(self.render(value) if self.render is not None else format_value(value), multiline=self.fold)


def console() -> Console:
    """A stdout console; piped output is not wrapped and carries no colour codes."""
    out = Console(highlight=False)
    if not out.is_terminal and not os.environ.get("COLUMNS"):
        out = Console(highlight=False, width=_PIPE_WIDTH)
    return out




def to_json(data: Any) -> str:
    return json.dumps(data, default=json_default, ensure_ascii=False)


def print_json(data: Any) -> None:
    print(to_json(data))


def format_value(value: Any) -> str:
    """How a single value reads in a table: ``-`` for NULL, ISO 8601 to the second for times."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, timedelta):
        return format_seconds(value.total_seconds())
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(format_value(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return to_json(value)
    return str(value)


def build_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], *, title: str | None = None,
                footer: Mapping[str, Any] | None = None) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE, show_edge=False, pad_edge=False,
                  show_footer=footer is not None, header_style="bold")
    for column in columns:
        table.add_column(
            column.header,
            footer=Text(column.text(footer)) if footer is not None else "",
            justify=column.justify,
            overflow="fold" if column.fold else "ellipsis",
            no_wrap=not column.fold,
        )
    for row in rows:
        table.add_row(*(Text(column.text(row)) for column in columns))
    return table


def emit(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], *, json_output: bool,
         title: str | None = None, empty: str = "nothing to show", footer: Mapping[str, Any] | None = None) -> None:
    """Print ``rows`` as JSON (a list of objects) or as a table of ``columns`` (``footer``: a totals row)."""
    if json_output:
        print_json(list(rows))
        return
    out = console()
    if not rows:
        out.print(Text(empty))
        return
    out.print(build_table(rows, columns, title=title, footer=footer))


def emit_record(record: Mapping[str, Any], fields: Sequence[Column], *, title: str | None = None) -> None:
    """Print one object as a two-column (field, value) table, for people."""
    table = Table(title=title, title_justify="left", box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for field in fields:
        table.add_row(Text(field.header), Text(printable(field.text(record))))
    console().print(table)


def emit_message(message: str, data: Mapping[str, Any], *, json_output: bool) -> None:
    """The outcome of an action: a sentence for people, ``data`` as a JSON object for machines."""
    if json_output:
        print_json(dict(data))
    else:
        print(printable(message))


def stderr_progress(*columns: str | ProgressColumn, quiet: bool = False) -> Progress:
    """A transient progress display on stderr, shown only on a terminal (and not when ``quiet``):
    off one, even a transient bar leaves an empty line on stderr, which cron mails."""
    from rich.progress import Progress  # only the commands that show progress pay for its import

    errors = Console(stderr=True)
    return Progress(*columns, console=errors, transient=True, disable=quiet or not errors.is_terminal)
