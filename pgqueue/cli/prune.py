"""pgqueue prune: delete finished jobs (and spent cron run records) by age, now.

The same pruning the workers' maintenance leader runs every ``PGQUEUE_PRUNE_INTERVAL_SECONDS``,
with the same defaults (``PGQUEUE_RETAIN_COMPLETED``, ``_FAILED``, ``_AUDIT``); each option
overrides one of them for this run. It deletes in batches of 5,000 rows (``--batch``), one short
transaction each, and each batch writes its ``pruned`` row in ``pgqueue.job_events`` in that
transaction (its counts, the run's cutoffs, actor the OS user, source ``cli``), so a run killed
half way has audited everything it deleted. It prints the run's totals. A thin layer over
:func:`pgqueue.admin.prune`.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

from pgqueue import admin
from pgqueue._retention import BATCH_SIZE, MAX_BATCH_SIZE
from pgqueue.cli._admin import SOURCE, actor
from pgqueue.cli._context import DsnOption, JsonOption, fail, resolve, usage_error
from pgqueue.cli._output import Column, emit, print_json, stderr_progress
from pgqueue.errors import ConfigurationError
from pgqueue.settings import parse_duration

_DURATION_HELP = "90s, 15m, 12h, 1d, 2w or 'never'"

COLUMNS = [
    Column("kind", "KIND"),
    Column("rows", "ROWS", justify="right"),
    Column("older_than", "FINISHED BEFORE"),
]

# (report field, label, which cutoff applies)
_KINDS = (
    ("completed", "completed jobs", "completed_before"),
    ("failed", "failed jobs", "failed_before"),
    ("cancelled", "cancelled jobs", "failed_before"),
    ("schedule_runs", "schedule runs", "audit_before"),
    ("audit_events", "audit events", "audit_before"),
)


def _age(raw: str | None) -> str | admin._Unchanged:
    """An option as given, or the setting's value when it was not."""
    return admin.UNCHANGED if raw is None else raw


def prune(
    completed_older_than: Annotated[str | None, typer.Option(
        "--completed-older-than", metavar="DURATION",
        help=f"Delete completed jobs finished longer ago ({_DURATION_HELP}; default PGQUEUE_RETAIN_COMPLETED, 1d).",
        show_default=False)] = None,
    failed_older_than: Annotated[str | None, typer.Option(
        "--failed-older-than", metavar="DURATION",
        help=f"Delete failed and cancelled jobs finished longer ago ({_DURATION_HELP}; default "
             "PGQUEUE_RETAIN_FAILED, 7d).", show_default=False)] = None,
    audit_older_than: Annotated[str | None, typer.Option(
        "--audit-older-than", metavar="DURATION",
        help=f"Audit retention ({_DURATION_HELP}; default PGQUEUE_RETAIN_AUDIT, 30d): also prunes cron run "
             "records no schedule can fire again. Shorter than PGQUEUE_RETAIN_AUDIT, it makes `audit verify` "
             "report the early pruning unless given --audit-retention as short.", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")] = False,
    batch: Annotated[int, typer.Option(
        "--batch", help=f"Rows deleted per transaction (1-{MAX_BATCH_SIZE}): smaller batches hold fewer locks "
                        "for less time.")] = BATCH_SIZE,
    json_output: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Delete finished jobs older than the retention now, in batches, each recorded in the audit trail.

    Completed jobs go after --completed-older-than, failed and cancelled ones after
    --failed-older-than (each counted from when the job finished); 'never' keeps them.
    Scheduled, available and running jobs are never pruned.
    """
    for raw, option in ((completed_older_than, "--completed-older-than"),
                        (failed_older_than, "--failed-older-than"), (audit_older_than, "--audit-older-than")):
        if raw is not None:
            try:  # checked here first so the message names the option
                parse_duration(raw, option)
            except ConfigurationError as exc:
                usage_error(str(exc))
    if not 1 <= batch <= MAX_BATCH_SIZE:
        usage_error(f"--batch {batch} must be between 1 and {MAX_BATCH_SIZE}")
    target = resolve(dsn)
    progress = stderr_progress(SpinnerColumn(), TextColumn("pruning {task.description}: {task.completed:,} rows"),
                               TimeElapsedColumn(), quiet=json_output or dry_run)
    try:
        with progress:
            task = progress.add_task("", total=None)
            report = admin.prune(
                target, completed_older_than=_age(completed_older_than), failed_older_than=_age(failed_older_than),
                audit_older_than=_age(audit_older_than), dry_run=dry_run, actor=actor(), source=SOURCE,
                batch_size=batch,
                progress=lambda step, done: progress.update(task, description=step, completed=done))
    except ConfigurationError as exc:  # PGQUEUE_RETAIN_* malformed
        fail(str(exc), code=2)
    data = report.as_dict()
    if json_output:
        print_json(data)
        return
    cutoffs = report.cutoffs
    rows = [{"kind": label, "rows": data[key],
             "older_than": getattr(cutoffs, cutoff, None) or "never (kept)"} for key, label, cutoff in _KINDS]
    if dry_run:
        print(f"would delete {report.total:,} rows (dry run: nothing was deleted)")
    else:
        print(f"deleted {report.total:,} rows")
    emit(rows, COLUMNS, json_output=False)
