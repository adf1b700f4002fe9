"""Retention: prune finished jobs and spent cron run records by age, and vacuum ``pgqueue.jobs``
when nothing else will.

A prune run is a sequence of steps (completed jobs, failed and cancelled jobs, ``schedule_runs``
rows, then audit rows, a whole seal at a time so the chain stays verifiable). Each step deletes in
batches of ``batch_size`` rows, oldest first, one short transaction per batch, so the pruner never
holds many row locks or writes one huge burst of WAL. The run's summary row in ``pgqueue.job_events`` (event ``pruned``)
is written in the transaction of its last batch; a run that fails midway keeps the batches it
committed and records them in a summary row of their own (``finished: false``) when the session
still works, so no deleted row goes unaccounted for.

Why pgqueue vacuums at all: a queue table turns over its whole content every few seconds. With
autovacuum off (the server's setting or the table's ``autovacuum_enabled``) nothing ever
reclaims the dead rows and the table and its indexes grow without bound. So the maintenance
leader runs ``VACUUM pgqueue.jobs`` itself in that case, once dead rows pass a fifth of the live
ones (autovacuum's own default scale factor), provided its role may.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pgqueue import _audit
from pgqueue._db.errors import DATABASE_ERRORS
from pgqueue._db.retention import Cutoffs, RetentionStore
from pgqueue._db.sessions import longer_answer_timeout, session_broken
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
    """Delete what ``policy`` no longer keeps, in batches, and record one ``pruned`` audit row.

    Runs on an autocommit connection: each batch is its own transaction.

    Args:
        conn: an autocommit psycopg connection.
        policy: the ages to keep.
        actor: written to the summary row (``maintenance``, or the OS user from the CLI).
        progress: called after each batch with the step's name and the rows deleted so far.
        batch_size: rows per delete statement.
        max_batches: stop after this many batches (the report is then not ``finished``).
        record_empty: write the summary row even when nothing was deleted.
        source: where the run came from (``cli``, ``api``), in the summary row's detail when given.

    Returns:
        The rows deleted per kind.
    """
    store = RetentionStore(conn)
    cutoffs = store.cutoffs(policy.completed, policy.failed, policy.audit)
    report = PruneReport(cutoffs=cutoffs)
    steps = _steps(store, cutoffs)
    if not steps:
        with conn.transaction():
            _record(store, report, actor, record_empty, source)
        return report
    current = 0
    committed = PruneReport(cutoffs=cutoffs, finished=False)
    recorded = False
    while True:
        step = steps[current]
        try:
            with conn.transaction():
                counts = step.run(batch_size)
                report.batches += 1
                report.add(counts)
                if sum(counts.values()) < batch_size:
                    current += 1
                done = current == len(steps)
                out_of_budget = not done and max_batches is not None and report.batches >= max_batches
                if done or out_of_budget:
                    report.finished = done
                    _record(store, report, actor, record_empty, source)
            recorded = done or out_of_budget
            committed.add(counts)
            if progress is not None:
                progress(step.name, report.total)
        # Not only database errors: an operator's Ctrl-C (or an exception from `progress`) between
        # batches must not leave the batches already committed without their audit row.
        except BaseException:
            if not recorded:
                _record_failed_run(store, committed, actor, source)
            raise
        if done or out_of_budget:
            return report


def _record(store: RetentionStore, report: PruneReport, actor: str, record_empty: bool,
            source: str | None = None) -> None:
    if report.total or record_empty:
        detail = report.as_dict()
        del detail["dry_run"]
        if source:
            detail["source"] = source
        store.insert_prune_event(actor, detail)


def _record_failed_run(store: RetentionStore, committed: PruneReport, actor: str, source: str | None) -> None:
    """Account for the batches a failed run committed, if the session still takes a statement."""
    if not committed.total or session_broken(store.conn):
        return
    with suppress(*DATABASE_ERRORS), store.conn.transaction():
        _record(store, committed, actor, record_empty=False, source=source)


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
