"""pgqueue embedded status|stop: inspect and stop the embedded PostgreSQL server (under PGQUEUE_HOME)."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from pgqueue.cli._context import JsonOption, fail
from pgqueue.errors import PgqueueError
from pgqueue.settings import pgqueue_home

app = typer.Typer(
    help="Manage the embedded PostgreSQL server used when no DSN is configured (data under PGQUEUE_HOME).",
    no_args_is_help=True,
)


@app.command("status")
def status_command(json_output: JsonOption = False) -> None:
    """Show whether the embedded server runs, and where. Exits 0 either way."""
    from pgqueue import _embedded  # imported lazily, as settings does: production never needs it

    try:
        info = _embedded.status(pgqueue_home())
    except PgqueueError as exc:
        fail(str(exc))
    if json_output:
        print(json.dumps(info))
        return
    if info["running"]:
        headline = f"[green]running[/green] (pid {info['pid']}, port {info['port']})"
    else:
        headline = f"[yellow]not running[/yellow] ({info['state']})"
    console = Console()
    console.print(f"embedded PostgreSQL server: {headline}")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for label, value in (
        ("dsn", info["dsn"]),
        ("version", info["version"]),
        ("home", info["home"]),
        ("data", info["data_dir"]),
        ("log", info["log_file"]),
    ):
        table.add_row(label, "-" if value is None else str(value))
    console.print(table)


@app.command("stop")
def stop_command(json_output: JsonOption = False) -> None:
    """Stop the embedded server (a fast shutdown: open sessions are ended). Exits 0 if it was not running."""
    from pgqueue import _embedded

    try:
        before = _embedded.status(pgqueue_home())
        stopped = _embedded.stop(pgqueue_home())
    except PgqueueError as exc:
        fail(str(exc))
    if json_output:
        print(json.dumps({"stopped": stopped, "pid": before["pid"] if stopped else None, "home": before["home"]}))
    elif stopped:
        print(f"stopped the embedded PostgreSQL server (pid {before['pid']}) in {before['home']}")
    else:
        print(f"the embedded PostgreSQL server in {before['home']} was not running")
