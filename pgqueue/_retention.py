"""Retention: prune finished jobs and spent cron run records by age, and vacuum ``pgqueue.jobs``
when nothing else will.

A prune run is a sequence of steps (completed jobs, failed and cancelled jobs, ``schedule_runs``
rows, then audit rows, a whole seal at a time so the chain stays verifiable). It deletes in
batches of ``batch_size`` rows, oldest first (a step that runs out leaves the rest of its batch to
the next step), one short transaction per batch, so the pruner never holds many row locks or
writes one huge burst of WAL. Each batch that deletes anything writes its ``pruned`` row in
``pgqueue.job_events``, with its own counts, in its own transaction: a run stopped at any point,
even by SIGKILL, leaves no deleted row unaccounted for. The run's last batch always writes one
(``finished`` says whether anything was left), except in a maintenance run that deleted nothing.

Why pgqueue vacuums at all: a queue table turns over its whole content every few seconds. With
autovacuum off (the server's setting or the table's ``autovacuum_enabled``) nothing ever
reclaims the dead rows and the table and its indexes grow without bound. So the maintenance
leader runs ``VACUUM pgqueue.jobs`` itself in that case, once dead rows pass a fifth of the live
ones (autovacuum's own default scale factor), provided its role may.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pgqueue import _audit
from pgqueue._db.retention import Cutoffs, RetentionStore
from pgqueue._db.sessions import longer_answer_timeout
from pgqueue._log import get_logger
from pgqueue.settings import Settings

if TYPE_CHECKING:
    from pgqueue._db.types import PsycopgConnection

#: Rows per delete statement: small enough that one batch locks little and commits in milliseconds.
BATCH_SIZE = 5_000
#: The largest batch ``pgqueue prune --batch`` accepts: one transaction must stay short.
MAX_BATCH_SIZE = 100_000

#: Vacuum once dead rows exceed this fraction of the live ones plus VACUUM_DEAD_MIN (autovacuum's defaults
#: are 0.2 and 50; the floor is higher because pgqueue's check is cheap but a VACUUM is not).
VACUUM_DEAD_FRACTION = 0.2
VACUUM_DEAD_MIN = 1_000

#: How long a VACUUM may run before the session is given up (the keepalives still catch a dead path).
VACUUM_ANSWER_TIMEOUT = 6 * 3600.0

ProgressCallback = Callable[[str, int], None]


@dataclass(frozen=True)
class RetentionPolicy:
    """How long finished work is kept, in seconds; None keeps it forever.

    Attributes:
        completed: completed jobs, counted from ``finished_at``.
        failed: failed and cancelled jobs, counted from ``finished_at``.
        audit: ``pgqueue.job_events`` rows, and ``schedule_runs`` rows no schedule can fire again.
    """

    completed: float | None
    failed: float | None
    audit: float | None

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        return cls(settings.retain_completed, settings.retain_failed, settings.retain_audit)


@dataclass
class PruneReport:
    """Rows deleted (or, for a dry run, that would be) per kind, and the cutoffs used."""

    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    schedule_runs: int = 0
    audit_events: int = 0
    cutoffs: Cutoffs | None = None
    dry_run: bool = False
    #: False when the run stopped at its batch budget with rows left to delete.
    finished: bool = True
    batches: int = 0

    COUNTS = ("completed", "failed", "cancelled", "schedule_runs", "audit_events")

    @property
    def total(self) -> int:
        return sum(self.counts().values())

    def counts(self) -> dict[str, int]:
        return {kind: int(getattr(self, kind)) for kind in self.COUNTS}

    def add(self, counts: dict[str, int]) -> None:
        for kind, count in counts.items():
            setattr(self, kind, getattr(self, kind) + count)

    def as_dict(self) -> dict[str, Any]:
        cutoffs = self.cutoffs or Cutoffs(None, None, None)
        return {**self.counts(), "dry_run": self.dry_run, "finished": self.finished,
                "completed_before": _iso(cutoffs.completed_before), "failed_before": _iso(cutoffs.failed_before),
                "audit_before": _iso(cutoffs.audit_before)}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass
class _Step:
    """One kind of row to prune: ``run(limit)`` deletes one batch and returns counts per kind."""

    name: str
    run: Callable[[int], dict[str, int]]


def _steps(store: RetentionStore, cutoffs: Cutoffs) -> list[_Step]:
    steps: list[_Step] = []
    if cutoffs.completed_before is not None:
        before = cutoffs.completed_before
        steps.append(_Step("completed", lambda limit: store.delete_completed_jobs(before, limit)))
    if cutoffs.failed_before is not None:
        failed_before = cutoffs.failed_before
        steps.append(_Step("failed", lambda limit: store.delete_failed_jobs(failed_before, limit)))
    if cutoffs.audit_before is not None:
        audit_before = cutoffs.audit_before
        steps.append(_Step("schedule_runs", lambda limit: {
            "schedule_runs": store.delete_schedule_runs(audit_before, limit)}))
        # Whole sealed ranges only (see pgqueue._audit): a batch may exceed the limit by one seal.
        steps.append(_Step("audit_events", lambda limit: {
            "audit_events": _audit.prune_sealed(store.conn, audit_before, min_events=limit)}))
    return steps


def prune(conn: PsycopgConnection, policy: RetentionPolicy, actor: str,
          progress: ProgressCallback | None = None, *, batch_size: int = BATCH_SIZE,
          max_batches: int | None = None, record_empty: bool = True, source: str | None = None) -> PruneReport:
    """Delete what ``policy`` no longer keeps, in batches, each audited by a ``pruned`` row of its own.

    Runs on an autocommit connection: each batch is its own transaction, and the ``pruned`` row
    with that batch's counts is written in it, so whenever the run stops (an error, Ctrl-C,
    SIGKILL, a lost connection) the trail accounts for every row deleted so far.

    Args:
        conn: an autocommit psycopg connection.
        policy: the ages to keep.
        actor: written to the audit rows (``maintenance``, or the OS user from the CLI).
        progress: called after each batch with the step's name and the rows deleted so far.
        batch_size: rows per transaction (an audit batch may exceed it by one seal).
        max_batches: stop after this many batches (the report is then not ``finished``).
        record_empty: write a row for a run that deleted nothing.
        source: where the run came from (``cli``, ``api``), in the rows' detail when given.

    Returns:
        The rows deleted per kind, over the whole run.
    """
    store = RetentionStore(conn)
    cutoffs = store.cutoffs(policy.completed, policy.failed, policy.audit)
    report = PruneReport(cutoffs=cutoffs)
    steps = _steps(store, cutoffs)
    # The rows of one run share an id, so its totals are the sum of its rows.
    run = uuid.uuid4().hex
    current = 0
    while True:
        with conn.transaction():
            counts, current, step = _batch(steps, current, batch_size)
            report.batches += 1
            report.add(counts)
            done = current == len(steps)
            last = done or (max_batches is not None and report.batches >= max_batches)
            # A batch that deleted nothing needs no row, except the run's last one: it says
            # whether the run finished (and `pgqueue prune` always leaves a row).
            if sum(counts.values()) or (last and (report.total or record_empty)):
                batch = PruneReport(cutoffs=cutoffs, finished=done)
                batch.add(counts)
                _record(store, batch, actor, source, run=run, number=report.batches)
        if progress is not None:
            progress(step, report.total)
        if last:
            report.finished = done
            return report


def _batch(steps: list[_Step], current: int, limit: int) -> tuple[dict[str, int], int, str]:
    """Delete up to ``limit`` rows, from ``steps[current]`` on: a step that comes up short is done,
    and the next one fills the rest of the batch. Returns the counts, the step to go on with
    (``len(steps)`` when all are done) and, for progress, the last step that deleted something
    (else the first one run)."""
    counts: dict[str, int] = {}
    name = steps[current].name if current < len(steps) else "nothing"
    left = limit
    while current < len(steps) and left > 0:
        step = steps[current]
        deleted = step.run(left)
        for kind, count in deleted.items():
            counts[kind] = counts.get(kind, 0) + count
        total = sum(deleted.values())
        if total:
            name = step.name
        if total < left:
            current += 1
        left -= total
    return counts, current, name


def _record(store: RetentionStore, batch: PruneReport, actor: str, source: str | None, *, run: str,
            number: int) -> None:
    detail = batch.as_dict()
    del detail["dry_run"]
    detail |= {"run": run, "batch": number}
    if source:
        detail["source"] = source
    store.insert_prune_event(actor, detail)


def count_prunable(conn: PsycopgConnection, policy: RetentionPolicy) -> PruneReport:
    """What :func:`prune` would delete now, deleting nothing (``pgqueue prune --dry-run``)."""
    store = RetentionStore(conn)
    cutoffs = store.cutoffs(policy.completed, policy.failed, policy.audit)
    report = PruneReport(cutoffs=cutoffs, dry_run=True)
    report.add(store.count_prunable_jobs(cutoffs))
    if cutoffs.audit_before is not None:
        report.schedule_runs = store.count_prunable_schedule_runs(cutoffs.audit_before)
        report.audit_events = _audit.count_prunable(conn, cutoffs.audit_before)
    return report


@dataclass
class VacuumDecision:
    vacuumed: bool
    reason: str
    live: int = 0
    dead: int = 0


class Vacuumer:
    """Runs ``VACUUM pgqueue.jobs`` when autovacuum is off for it and dead rows have piled up.

    ``deleted`` (rows this process deleted since its last VACUUM) counts too: the statistics
    reach ``pg_stat_user_tables`` up to a second late, so a big prune may not show there yet.
    """

    def __init__(self) -> None:
        self.deleted_since_vacuum = 0
        self._warned = False

    def maybe_vacuum(self, conn: PsycopgConnection) -> VacuumDecision:
        store = RetentionStore(conn)
        state = store.vacuum_state()
        dead = max(state.dead, self.deleted_since_vacuum)
        if state.autovacuum:
            return VacuumDecision(False, "autovacuum", state.live, dead)
        if dead <= VACUUM_DEAD_FRACTION * state.live + VACUUM_DEAD_MIN:
            return VacuumDecision(False, "few dead rows", state.live, dead)
        if not state.may_vacuum:
            if not self._warned:
                self._warned = True
                get_logger("pgqueue.retention").warning(
                    "retention.vacuum_not_permitted", table="pgqueue.jobs", dead_rows=dead, live_rows=state.live,
                    note="autovacuum is off and this role does not own pgqueue.jobs: deleted jobs are not "
                         "reclaimed; turn autovacuum on or vacuum pgqueue.jobs from a privileged role")
            return VacuumDecision(False, "not permitted", state.live, dead)
        # The maintenance session bounds every wait for an answer (a half-open path must not hang
        # it), but a VACUUM of a big table legitimately takes longer.
        with longer_answer_timeout(conn, VACUUM_ANSWER_TIMEOUT):
            store.vacuum_jobs()
        self.deleted_since_vacuum = 0
        return VacuumDecision(True, "dead rows", state.live, dead)
