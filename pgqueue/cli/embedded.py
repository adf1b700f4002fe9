"""pgqueue embedded status|stop (placeholder; being written)."""

import typer

app = typer.Typer(help="Manage the embedded PostgreSQL server.", no_args_is_help=True)
