"""pgqueue audit show|verify: read one job's audit trail; check that the trail was not altered.

``verify`` first seals what is pending (rows of transactions that have finished) when its role
may, then recomputes every seal from the rows now in ``pgqueue.job_events`` and checks the chain's
links, and that only the oldest seals were pruned and only once the audit retention was up. It
exits 1 when anything was edited, deleted, inserted, re-cut or pruned early, naming the seal and
its time span. A read-only role (``pgqueue_reader``) verifies what is sealed and reports the rest
as not sealed yet.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from pgqueue import _audit
from pgqueue._db.errors import translate_errors
from pgqueue._db.sessions import connect
from pgqueue._humanize import printable
from pgqueue.cli._admin import parse_job_id
from pgqueue.cli._context import DsnOption, JsonOption, fail, resolve, usage_error
from pgqueue.cli._output import Column, emit, emit_record, print_json, stderr_progress
from pgqueue.cli.jobs import EVENT_COLUMNS
from pgqueue.errors import ConfigurationError
from pgqueue.settings import Settings, parse_duration

app = typer.Typer(help="The tamper-evident audit trail: show a job's events, verify the trail.",
                  no_args_is_help=True)

JobIdArgument = Annotated[str, typer.Argument(metavar="JOB_ID", help="The job whose trail to show.",
                                              show_default=False)]


def _seal_cell(seal_no: int | None, intact: dict[int, bool]) -> str:
    if seal_no is None:
        return "pending"
    return f"{seal_no} ok" if intact.get(seal_no) else f"{seal_no} ALTERED"


# The trail as `pgqueue jobs show` prints it, plus the seal covering each row.
TRAIL_COLUMNS = [*EVENT_COLUMNS, Column("seal", "SEAL")]

VERIFY_FIELDS = [
    Column("verdict", "verdict"),
    Column("seals", "seals checked"),
    Column("pruned_seals", "pruned seals (links checked)"),
    Column("events", "events verified"),
    Column("pending_events", "events not sealed yet"),
    Column("head_seal", "head seal"),
    Column("head_digest", "head digest"),
]


@app.command("show")
def show_command(job_id: JobIdArgument, json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """Show a job's audit trail, oldest first, with the seal covering each row and whether that seal
    still matches ("pending": written too recently to be sealed). Works after the job was pruned."""
    wanted = parse_job_id(job_id)
    with translate_errors(), connect(resolve(dsn), autocommit=True) as conn:
        events, intact = _audit.job_trail(conn, wanted)
    if not events:
        fail(f"no audit events for job {wanted} (it never existed, or retention pruned its trail)")
    rows = [{**e, "seal": _seal_cell(e["seal_no"], intact),
             "seal_intact": None if e["seal_no"] is None else intact.get(e["seal_no"], False)} for e in events]
    if json_output:
        print_json(rows)
    else:
        emit(rows, TRAIL_COLUMNS, json_output=False, title=f"audit trail of job {wanted}")
    # With --json too (as `audit verify --json`): a script that checks the exit code must see it.
    if not all(intact.values()):
        fail("a seal covering this job's trail does not match its rows: run `pgqueue audit verify`")


def _min_retention(raw: str | None) -> float:
    """The audit retention pruned seals are held to, in seconds (infinite for 'never')."""
    seconds = Settings.from_env().retain_audit if raw is None else parse_duration(raw, "--audit-retention")
    return math.inf if seconds is None else seconds


@app.command("verify")
def verify_command(
    seal: Annotated[bool, typer.Option(
        "--seal/--no-seal", help="Seal pending rows first, when this role may (INSERT on pgqueue.audit_seals); "
                                 "a read-only role verifies what is sealed.")] = True,
    expect: Annotated[list[str] | None, typer.Option(
        "--expect", metavar="DIGEST", help="A head digest printed by an earlier verify; fail unless it is still in "
                                           "the chain. Repeatable.")] = None,
    audit_retention: Annotated[str | None, typer.Option(
        "--audit-retention", metavar="DURATION",
        help="The shortest audit retention ever in force (90s, 15m, 12h, 1d, 2w or 'never'; default "
             "PGQUEUE_RETAIN_AUDIT, 30d): a seal pruned younger than this fails the check.",
        show_default=False)] = None,
    json_output: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Verify the audit trail: recompute every seal from pgqueue.job_events and check the chain.

    Exits 1 when a row was edited, deleted or inserted, a seal was altered or removed, or seals
    were pruned out of order or before the audit retention was up. Keep the printed head digest
    somewhere else (a ticket, a log store) and pass it to later runs with --expect: a chain that no
    longer contains it was recomputed by someone who could write both tables.
    """
    try:
        min_retention = _min_retention(audit_retention)
    except ConfigurationError as exc:
        usage_error(str(exc))
    for digest in expect or ():
        # A typo must not read as "the trail was altered" (its digest is in no chain).
        if not re.fullmatch(r"[0-9a-fA-F]{64}", digest.strip()):
            usage_error(f"--expect {digest!r} must be a head digest as audit verify prints it (64 hex characters)")
    with translate_errors(), connect(resolve(dsn), autocommit=True) as conn:
        if seal and _audit.can_seal(conn):
            _audit.seal_pending(conn)
        progress = stderr_progress(TextColumn("verifying seals"), BarColumn(), MofNCompleteColumn(),
                                   TimeElapsedColumn(), quiet=json_output)
        with progress:
            task = progress.add_task("verify", total=None)
            report = _audit.verify(conn, expect_digests=expect or (), min_retention=min_retention,
                                   progress=lambda done, total: progress.update(task, completed=done, total=total))
    data = report.as_dict()
    if json_output:
        print_json(data)
    else:
        emit_record({**data, "verdict": "intact" if report.ok else "ALTERED"}, VERIFY_FIELDS, title="audit verify")
        for problem in report.problems:
            print(printable(f"  - {problem}"))
    if not report.ok:
        fail(f"the audit trail was altered: {report.problems[0]}")
