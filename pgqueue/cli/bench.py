"""pgqueue bench: measure throughput and latency on the configured database server."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from pgqueue._bench import SCENARIOS, run_bench
from pgqueue.cli._context import DsnOption, JsonOption, fail, resolve, usage_error
from pgqueue.cli._output import console
from pgqueue.errors import PgqueueError


class _Bar:
    """The runner's progress, as a rich bar on stderr: one tick per scenario unit and repetition."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("", total=None, status="")
        self.started = False

    def start(self, total: int) -> None:
        self.progress.update(self.task, total=total)

    def step(self, label: str) -> None:
        if self.started:
            self.progress.advance(self.task)
        self.started = True
        self.progress.update(self.task, description=label, status="")

    def status(self, text: str) -> None:
        self.progress.update(self.task, status=text)

    def finish(self) -> None:
        self.progress.advance(self.task)
        self.progress.update(self.task, description="done", status="")


def bench(
    dsn: DsnOption = None,
    quick: Annotated[bool, typer.Option(
        "--quick", help="Small sizes and 1 repetition: every scenario in 1-2 minutes.")] = False,
    json_output: JsonOption = False,
    reps: Annotated[int | None, typer.Option("--reps", min=1, max=50,
                                             help="Repetitions per figure (default 3; 1 with --quick).")] = None,
    scenario: Annotated[list[str] | None, typer.Option(
        "--scenario", "-s", help=f"Run only these (repeatable): {', '.join(SCENARIOS)}.")] = None,
) -> None:
    """Measure enqueue and processing throughput, wake-up latency, backlog and churn behaviour,
    and PostgreSQL's own ceiling on the same server.

    Everything runs in scratch databases (pgqueue_bench_*) that are created on the configured
    server and dropped at the end (those of a run that was killed, by the next run); your jobs
    are never touched. The role needs CREATEDB.
    """
    unknown = [name for name in scenario or [] if name not in SCENARIOS]
    if unknown:
        usage_error(f"unknown scenario {unknown[0]!r}: choose from {', '.join(SCENARIOS)}")
    server = resolve(dsn)
    errors = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("[dim]{task.fields[status]}"))
    try:
        with Progress(*columns, console=errors, transient=True) as progress:
            bar = _Bar(progress)
            report = run_bench(server, quick=quick, reps=reps or (1 if quick else 3),
                               scenarios=scenario or (), progress=bar)
            bar.finish()
    except PgqueueError as exc:
        fail(str(exc))
    if json_output:
        print(json.dumps(report.as_json(), indent=1))
    else:
        console().print(report.renderable())
