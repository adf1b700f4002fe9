"""pgqueue workflows show|cancel|retry: a chain or group (see :mod:`pgqueue.workflows`) as a whole.

A thin layer over :mod:`pgqueue.admin` (``get_workflow``, ``cancel_workflow``, ``retry_workflow``);
every change is audited with the OS user as actor (source ``cli``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from pgqueue import admin
from pgqueue.cli._admin import SOURCE, actor, open_session
from pgqueue.cli._context import DsnOption, JsonOption
from pgqueue.cli._output import emit_message, print_json

app = typer.Typer(help="Workflows (chains and groups): show, cancel, retry.", no_args_is_help=True)

WorkflowArgument = Annotated[
    str, typer.Argument(metavar="ID", help="The workflow's id (a UUID), or the id of one of its jobs.",
                        show_default=False)]


def _tree(info: admin.WorkflowInfo) -> list[str]:
    """The jobs as a tree: each job under the job(s) it depends on; a job with several
    dependencies (a group's callback) appears under the last of them, naming the others."""
    by_id = {job.id: job for job in info.jobs}
    children: dict[int | None, list[admin.WorkflowJob]] = {}
    for job in info.jobs:
        inside = [d for d in job.depends_on if d in by_id]
        children.setdefault(max(inside) if inside else None, []).append(job)
    lines: list[str] = []

    def label(job: admin.WorkflowJob) -> str:
        text = f"{job.id} {job.task} [{job.state}]"
        if len(job.depends_on) > 1:
            text += f" after {', '.join(map(str, job.depends_on))}"
        if job.error_type:
            text += f" ({job.error_type})"
        return text

    def walk(parent: int | None, prefix: str) -> None:
        kids = children.get(parent, [])
        for index, job in enumerate(kids):
            last = index == len(kids) - 1
            lines.append(f"{prefix}{'└─ ' if last else '├─ '}{label(job)}")
            walk(job.id, prefix + ("   " if last else "│  "))

    walk(None, "")
    return lines


@app.command("show")
def show_command(workflow_id: WorkflowArgument, json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """Show a workflow as a tree of its jobs with their states (--json: every job and its dependencies)."""
    with open_session(dsn) as conn:
        info = admin.get_workflow(conn, workflow_id)
    if json_output:
        print_json(info.as_dict())
        return
    counts = ", ".join(f"{n} {state}" for state, n in sorted(info.counts.items()))
    print(f"workflow {info.id}: {info.state} ({counts})")
    for line in _tree(info):
        print(line)


@app.command("cancel")
def cancel_command(workflow_id: WorkflowArgument, json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """Cancel every unfinished job of a workflow; completed jobs stay completed."""
    with open_session(dsn) as conn:
        info = admin.get_workflow(conn, workflow_id)
        ids = admin.cancel_workflow(conn, info.id, actor=actor(), source=SOURCE)
    emit_message(f"cancelled {len(ids)} job{'' if len(ids) == 1 else 's'} of workflow {info.id}",
                 {"workflow_id": info.id, "cancelled": ids, "count": len(ids)}, json_output=json_output)


@app.command("retry")
def retry_command(workflow_id: WorkflowArgument, json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """Retry every failed or cancelled job of a workflow; jobs still depending on others wait again.

    Refused, changing nothing, when a job would wait for ever: for a dependency that was deleted,
    or for a failed or cancelled job of another workflow (the error names it).
    """
    with open_session(dsn) as conn:
        info = admin.get_workflow(conn, workflow_id)
        ids = admin.retry_workflow(conn, info.id, actor=actor(), source=SOURCE)
    emit_message(f"retried {len(ids)} job{'' if len(ids) == 1 else 's'} of workflow {info.id}",
                 {"workflow_id": info.id, "retried": ids, "count": len(ids)}, json_output=json_output)
