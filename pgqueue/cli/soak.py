"""pgqueue soak: run workers and schedulers under chaos, then check the books."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from pgqueue.cli._context import DsnOption, JsonOption, fail, resolve
from pgqueue.errors import PgqueueError


class _Bar:
    """The run's phases as a rich progress bar on stderr."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("", total=None, status="")

    def phase(self, description: str, total: float | None) -> None:
        self.progress.reset(self.task, total=total, description=description, status="")

    def update(self, completed: float, status: str) -> None:
        self.progress.update(self.task, completed=completed, status=status)

    def note(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)


def soak(
    dsn: DsnOption = None,
    jobs: Annotated[int, typer.Option("--jobs", min=0, help="Jobs streamed over the run.")] = 200_000,
    minutes: Annotated[float, typer.Option("--minutes", min=0.05, help="Length of the chaos phase.")] = 10.0,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the fault plan: the same seed, the same plan.")] = 1,
    workers: Annotated[int, typer.Option("--workers", min=1, max=32, help="pgqueue worker processes.")] = 3,
    schedulers: Annotated[int, typer.Option("--schedulers", min=0, max=16, help="pgqueue scheduler processes.")] = 2,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=100, help="Jobs at once per worker.")] = 10,
    private_server: Annotated[bool, typer.Option(
        "--private-server", help="Start a private PostgreSQL server under a fresh /tmp home (embedded "
                                 "binaries), so the chaos loop may restart the database too.")] = False,
    drain_seconds: Annotated[float, typer.Option("--drain-seconds", min=1, help="Bound on the final drain.")] = 120.0,
    keep_database: Annotated[bool, typer.Option(
        "--keep-database", help="Keep the scratch database (and private server home) for inspection.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Run WORKERS `pgqueue worker` and SCHEDULERS `pgqueue scheduler` processes while JOBS jobs
    are enqueued over MINUTES and a seeded chaos loop SIGKILLs workers and schedulers (then
    restarts them), terminates pgqueue's backends and, with --private-server, restarts the
    database. Then drain, stop, and check the books. Exit 0 when every figure holds, 1 otherwise.

    Everything runs in a scratch database (pgqueue_soak_<pid>) created on the server and dropped
    at the end; the role needs CREATEDB. Child process logs go to a temporary directory (printed).
    """
    try:
        # Imported here, not at the top: the soak's App is built from the environment at import,
        # and a bad setting there must fail this command in one line, not every command's import.
        from pgqueue._soak.runner import SoakOptions, run_soak
    except PgqueueError as exc:
        fail(str(exc))
    server = None if private_server else resolve(dsn)
    errors = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
               TextColumn("[dim]{task.fields[status]}"))
    options = SoakOptions(dsn=server, jobs=jobs, minutes=minutes, seed=seed, workers=workers,
                          schedulers=schedulers, concurrency=concurrency, private_server=private_server,
                          drain_seconds=drain_seconds, keep_database=keep_database)
    try:
        with Progress(*columns, console=errors, transient=True) as progress:
            board = run_soak(options, _Bar(progress))
    except PgqueueError as exc:
        fail(str(exc))
    board.info["command"] = "pgqueue " + " ".join(sys.argv[1:])
    if json_output:
        print(json.dumps(board.as_json(), indent=1, default=str))
    else:
        console = Console()
        if not console.is_terminal:
            console = Console(width=120)
        console.print(board.renderable())
    raise typer.Exit(0 if board.ok else 1)
