"""pgqueue queues list|pause|resume|purge: per-queue counts and controls.

Pausing and resuming write a ``pgqueue.job_events`` row (job_id NULL, detail ``{"queue": ...}``);
purging writes one ``purged`` row per deleted job. The actor is ``cli:<os user>``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from pgqueue._db.jobs import JobStore
from pgqueue._db.queues import QueueStore
from pgqueue._payload import check_queue_name
from pgqueue.cli._admin import actor, open_store, parse_state
from pgqueue.cli._context import DsnOption, JsonOption, fail
from pgqueue.cli._output import Column, emit, emit_message, format_seconds
from pgqueue.jobs import JobState

app = typer.Typer(help="Per-queue counts and controls: list, pause, resume, purge.", no_args_is_help=True)

QueueArgument = Annotated[str, typer.Argument(metavar="QUEUE", help="The queue's name.", show_default=False)]

# Running jobs are never purged: their workers still hold them. Cancel them first.
PURGEABLE_STATES = tuple(s for s in JobState if s is not JobState.RUNNING)

COUNT_COLUMNS = [Column(str(s), str(s).upper(), justify="right") for s in JobState]

QUEUE_COLUMNS = [
    Column("queue", "QUEUE"),
    Column("paused", "PAUSED"),
    *COUNT_COLUMNS,
    Column("oldest_available_seconds", "OLDEST AVAILABLE", render=format_seconds, justify="right"),
]


@app.command("list")
def list_command(json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """List queues (from the pgqueue.queue_stats view): paused or not, jobs per state, oldest available job.

    With --json, "oldest_available_seconds" is the age in seconds of the queue's oldest available job.
    """
    with open_store(dsn, QueueStore) as store:
        rows = store.queue_stats()
    emit(rows, QUEUE_COLUMNS, json_output=json_output, empty="no queues yet (a queue appears with its first job)")


def _set_paused(queue: str, paused: bool, json_output: bool, dsn: str | None) -> None:
    check_queue_name(queue)
    with open_store(dsn, QueueStore) as store:
        store.set_queue_paused(queue, paused, actor())
    if paused:
        message = f"paused queue {queue!r}: workers stop claiming its jobs; running jobs finish"
    else:
        message = f"resumed queue {queue!r}: workers claim its jobs again"
    emit_message(message, {"queue": queue, "paused": paused}, json_output=json_output)


@app.command("pause")
def pause_command(queue: QueueArgument, json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """Pause a queue: workers stop claiming its jobs (enqueueing still works; running jobs finish)."""
    _set_paused(queue, True, json_output, dsn)


@app.command("resume")
def resume_command(queue: QueueArgument, json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """Resume a paused queue and wake idle workers."""
    _set_paused(queue, False, json_output, dsn)


def _purgeable(stats: Mapping[str, Any] | None, state: str | None) -> int:
    if stats is None:
        return 0
    states = [state] if state else [str(s) for s in PURGEABLE_STATES]
    return sum(int(stats[s]) for s in states)


@app.command("purge")
def purge_command(
    queue: QueueArgument,
    state: Annotated[
        str | None, typer.Option("--state", "-s", help="Only jobs in this state (default: all but running).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_output: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Delete a queue's jobs (all but running ones, or only --state S). Asks first unless --yes.

    Each deleted job leaves a 'purged' event in pgqueue.job_events.
    """
    check_queue_name(queue)
    if state is not None and state.strip().lower() == JobState.RUNNING:
        fail("running jobs cannot be purged: their workers hold them; cancel them first (pgqueue jobs cancel ID)")
    wanted = parse_state(state, PURGEABLE_STATES)
    scope = f"{wanted} jobs" if wanted else "jobs"
    if not yes:
        if not sys.stdin.isatty():
            fail(f"refusing to purge queue {queue!r} without confirmation: stdin is not a terminal; pass --yes")
        with open_store(dsn, QueueStore) as store:
            stats = next((row for row in store.queue_stats() if row["queue"] == queue), None)
        count = _purgeable(stats, wanted)
        if count == 0:
            emit_message(f"queue {queue!r} has no {scope} to purge", {"queue": queue, "state": wanted, "purged": 0},
                         json_output=json_output)
            return
        question = f"Delete {count} {scope} from queue {queue!r} (running jobs are kept)? This cannot be undone"
        if not typer.confirm(question, default=False, err=True):
            fail("purge cancelled; nothing was deleted")
    with open_store(dsn, JobStore) as store:
        purged = store.purge_queue(queue, wanted, actor())
    emit_message(f"purged {purged} {scope} from queue {queue!r}", {"queue": queue, "state": wanted, "purged": purged},
                 json_output=json_output)
