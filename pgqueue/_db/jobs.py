"""Jobs (``jobs.sql``): enqueue, claim, acknowledge, progress, and an operator's actions on jobs.

``JobStore`` and ``AsyncJobStore`` are twins: a method of the same name runs the same statements,
on a psycopg ``Connection`` or ``AsyncConnection``; each exists in the flavour its callers need
(enqueue and completion in both, the claim loop's statements only async, the heartbeat's progress
and the operator's actions only sync). Rows in, dataclasses out; errors through
:func:`pgqueue._db.errors.translate_errors`.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg.rows import dict_row, tuple_row

from pgqueue._db.copy_rows import JobRowWriter, enqueued_event_chunks, workflow_extra
from pgqueue._db.cursors import async_cursor_on, async_execute_on, cursor_on, execute_on
from pgqueue._db.errors import translate_errors
from pgqueue._db.notifications import CANCEL_CHANNEL, DONE_CHANNEL, NOTIFY_CHANNEL, WAITERS_LOCK_KEY
from pgqueue._db.queries import load_queries
from pgqueue._payload import encode_json
from pgqueue.errors import DatabaseUnavailable, SchemaNotReady
from pgqueue.jobs import Job


class JobQueries(NamedTuple):
    insert_job: LiteralString
    insert_unique_job: LiteralString
    insert_jobs: LiteralString
    reserve_job_ids: LiteralString
    notify_queues: LiteralString
    copy_jobs: LiteralString
    job_events_copyable: LiteralString
    copy_job_events: LiteralString
    insert_copied_job_events: LiteralString
    savepoint_enqueue_many: LiteralString
    rollback_to_enqueue_many: LiteralString
    release_enqueue_many: LiteralString
    find_live_job_by_unique_key: LiteralString
    task_is_encrypted: LiteralString
    claim_jobs: LiteralString
    claim_jobs_any_queue: LiteralString
    claim_jobs_except_limited_tasks: LiteralString
    claim_jobs_any_queue_except_limited_tasks: LiteralString
    list_limited_scopes: LiteralString
    lock_queue_limits: LiteralString
    lock_task_limits: LiteralString
    claim_limited_queue_jobs: LiteralString
    claim_limited_queue_jobs_all_tasks: LiteralString
    claim_limited_task_jobs: LiteralString
    sync_task_limits: LiteralString
    sync_encrypted_tasks: LiteralString
    complete_jobs: LiteralString
    fail_jobs: LiteralString
    release_jobs: LiteralString
    release_lost_claims: LiteralString
    update_progress: LiteralString
    get_job: LiteralString
    retry_jobs: LiteralString
    cancel_stranded_dependents: LiteralString
    cancel_job: LiteralString
    delete_job: LiteralString
    purge_queue: LiteralString
    find_pending_job: LiteralString
    list_jobs_page: LiteralString
    get_job_state: LiteralString
    find_cancelled_jobs: LiteralString
    outcomes_already_written: LiteralString
    lock_dependencies: LiteralString
    insert_dependent_jobs: LiteralString
    copy_workflow_jobs: LiteralString
    dependency_results: LiteralString


JOBS = load_queries(JobQueries, "jobs.sql")


class LimitedClaim(NamedTuple):
    """What a limited queue's claim (``claim_limited_queue_jobs``) took and saw."""

    jobs: list[Job]
    #: A limit held back jobs that wait (it allowed less than asked, and the queue had claimable jobs).
    held_back: bool
    #: How many more starts the queue's limits allowed in all before this claim, whatever it asked.
    headroom: int


class Retried(NamedTuple):
    """What ``retry_jobs`` did, ids in order."""

    retried: list[int]
    #: Failed or cancelled jobs it left as they were: a live job holds their unique_key (or a newer
    #: dead job of the same key came back instead).
    skipped: list[int]


@dataclass(slots=True)
class NewJob:
    """A validated row to insert: args as JSON text, or (encrypted jobs) NULL and the ciphertext."""

    task: str
    queue: str
    priority: int
    args: str | None
    max_attempts: int
    run_at: datetime | None
    delay: float
    unique_key: str | None
    tags: tuple[str, ...]
    args_encrypted: bytes | None = None
    group_key: str | None = None
    # Workflows: existing jobs it depends on, jobs of the same batch it depends on (their
    # positions in the batch), its failure policy, and its workflow.
    depends_on: tuple[int, ...] = ()
    depends_on_batch: tuple[int, ...] = ()
    on_dependency_failure: str = "cancel"
    workflow_id: str | None = None

    @property
    def has_dependencies(self) -> bool:
        return bool(self.depends_on or self.depends_on_batch)


@dataclass(frozen=True)
class Outcome:
    """A finished attempt, waiting to be written: completed, retried or failed."""

    job_id: int
    token: str
    state: str  # completed | scheduled | available | failed
    result: str | None = None
    delay: float = 0.0
    error: str | None = None
    # Encrypted jobs: result is None and error holds only the type; the payloads are these.
    result_encrypted: bytes | None = None
    error_encrypted: bytes | None = None
    event: str = "completed"
    progress: float | None = None
    progress_note: str | None = None
    # Sealed jobs: progress_note is None and the note is this ciphertext.
    progress_note_encrypted: bytes | None = None


def _insert_params(job: NewJob, actor: str | None) -> dict[str, Any]:
    # No tags travel as NULL: adapting an empty list costs more than the server's COALESCE.
    return {
        "task": job.task, "queue": job.queue, "priority": job.priority, "args": job.args,
        "args_encrypted": job.args_encrypted,
        "max_attempts": job.max_attempts, "run_at": job.run_at, "delay": job.delay,
        "unique_key": job.unique_key, "tags": list(job.tags) if job.tags else None, "actor": actor,
        "channel": NOTIFY_CHANNEL, "group_key": job.group_key,
    }


# enqueue_many copies a batch with COPY from this many jobs on (10k jobs: 72k -> 88k jobs/s for
# the store part). Below it the extra round trips and the savepoint eat the gain (even at 200-400).
COPY_MIN_JOBS = 500
#: The largest batch one claim takes: the any-queue claims bound their locking scan by this
#: constant (jobs.sql, `LIMIT 200`) so that PostgreSQL can plan them once.
CLAIM_BATCH_MAX = 200


def _copyable(jobs: Sequence[NewJob]) -> bool:
    """Jobs whose every column the COPY path can send as is: available at once (state, run_at
    and enqueued_at are then the table's defaults) and with no unique_key to arbitrate."""
    return len(jobs) >= COPY_MIN_JOBS and all(
        job.unique_key is None and job.run_at is None and not job.delay for job in jobs)


def _copy_lines(rows: JobRowWriter, ids: Sequence[int], jobs: Iterable[NewJob], queues: set[str]) -> Iterator[str]:
    """Rows of JOBS.copy_jobs, one per job (validated as the COPY consumes them); notes each queue."""
    for job_id, job in zip(ids, jobs, strict=True):
        queues.add(job.queue)
        yield rows.line(job_id, job)


def _inserted_id(row: tuple[Any, ...] | None) -> int:
    if row is None:  # an INSERT without ON CONFLICT returns its row unless something else intervened
        raise SchemaNotReady("the INSERT into pgqueue.jobs returned no row: a trigger on the table suppressed it")
    return int(row[0])


def _bulk_params(jobs: Sequence[NewJob], actor: str | None) -> dict[str, Any]:
    return {
        "tasks": [j.task for j in jobs],
        "queues": [j.queue for j in jobs],
        "priorities": [j.priority for j in jobs],
        "args": [j.args for j in jobs],
        "args_encrypted": [j.args_encrypted for j in jobs],
        "max_attempts": [j.max_attempts for j in jobs],
        "run_ats": [j.run_at for j in jobs],
        "delays": [j.delay for j in jobs],
        "unique_keys": [j.unique_key for j in jobs],
        "tags": [encode_json(list(j.tags)) if j.tags else None for j in jobs],
        "group_keys": [j.group_key for j in jobs],
        "actor": actor,
        "channel": NOTIFY_CHANNEL,
    }


def _bulk_ids(rows: Sequence[tuple[Any, ...]]) -> tuple[list[int | None], list[tuple[int, str]]]:
    """Ids in input order; a row that lost a unique_key conflict takes the id of the row of the same
    batch that won it, and is otherwise left for the caller to look up (a live job from before)."""
    ids: list[int | None] = []
    unresolved: list[tuple[int, str]] = []
    winners: dict[str, int] = {}
    for job_id, unique_key, inserted, _notified in rows:
        if inserted:
            ids.append(job_id)
            if unique_key is not None:
                winners[unique_key] = job_id
        elif unique_key in winners:
            ids.append(winners[unique_key])
        else:
            ids.append(None)
            unresolved.append((len(ids) - 1, unique_key))
    return ids, unresolved


def _notify_params(queues: Iterable[str]) -> dict[str, Any]:
    return {"queues": sorted(queues), "channel": NOTIFY_CHANNEL}


#: (job id, lease token, percent, note, note ciphertext) of a running job.
ProgressRow = tuple[int, str, float, str | None, bytes | None]


def _release_params(jobs: Sequence[tuple[int, str]], reason: str) -> dict[str, Any]:
    return {"ids": [j[0] for j in jobs], "tokens": [j[1] for j in jobs], "channel": NOTIFY_CHANNEL, "reason": reason}


def _progress_params(updates: Sequence[ProgressRow]) -> dict[str, Any]:
    return {"ids": [u[0] for u in updates], "tokens": [u[1] for u in updates],
            "progress": [u[2] for u in updates], "notes": [u[3] for u in updates],
            "notes_encrypted": [u[4] for u in updates]}


def _job_from_row(row: tuple[Any, ...], token: str) -> Job:
    job_id, task, queue, args, attempt, max_attempts, enqueued_at, priority, tags, args_encrypted = row
    return Job(
        id=job_id, task=task, queue=queue, args=args if args is not None else {}, attempt=attempt,
        max_attempts=max_attempts, enqueued_at=enqueued_at, priority=priority, tags=tuple(tags or ()),
        lease_token=token, _sealed_args=args_encrypted,
    )


@contextlib.asynccontextmanager
async def _pipelined_transaction(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """Run the statements of the block in one transaction sent as one pipeline: one round trip.

    On an autocommit session with no transaction open (the worker's claim session), the pipeline's
    sync ends the implicit transaction of everything sent before it, so no BEGIN or COMMIT is sent
    (a limited claim was four round trips: BEGIN, lock, claim, COMMIT). Otherwise an explicit
    transaction wraps the pipeline, as ``conn.transaction()`` would. Results are read after the block.
    """
    if conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        async with conn.pipeline():
            yield
        return
    async with conn.transaction(), conn.pipeline():
        yield


def _limited_claim(rows: Sequence[tuple[Any, ...]], token: str) -> tuple[list[Job], int]:
    allowance = int(rows[0][0]) if rows else 0
    return [_job_from_row(row[1:], token) for row in rows if row[1] is not None], allowance


@dataclass(frozen=True)
class TaskLimits:
    """The limits one task declares in code (``@app.task(concurrency=..., rate=..., group_concurrency=...)``)."""

    task: str
    concurrency: int | None = None
    rate_limit: int | None = None
    rate_period_seconds: int | None = None
    group_concurrency: int | None = None


def _complete_params(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    return {
        "ids": [o.job_id for o in outcomes],
        "tokens": [o.token for o in outcomes],
        "results": [o.result for o in outcomes],
        "results_encrypted": [o.result_encrypted for o in outcomes],
        "progress": [o.progress for o in outcomes],
        "progress_notes": [o.progress_note for o in outcomes],
        "progress_notes_encrypted": [o.progress_note_encrypted for o in outcomes],
        "done_channel": DONE_CHANNEL, "waiters_lock": WAITERS_LOCK_KEY,
    }


def _fail_params(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    return {
        "ids": [o.job_id for o in outcomes],
        "tokens": [o.token for o in outcomes],
        "states": [o.state for o in outcomes],
        "delays": [o.delay for o in outcomes],
        "errors": [o.error for o in outcomes],
        "errors_encrypted": [o.error_encrypted for o in outcomes],
        "events": [o.event for o in outcomes],
        "channel": NOTIFY_CHANNEL, "done_channel": DONE_CHANNEL, "waiters_lock": WAITERS_LOCK_KEY,
    }


@dataclass(frozen=True)
class DependencyLayout:
    """The shape of a batch with dependencies, known before its jobs are validated: how many jobs,
    the existing jobs they depend on, which ones others in the batch depend on, and which ones go
    through COPY (no dependencies, available at once) while the rest are still being validated."""

    count: int
    external: list[int]
    has_dependents: list[bool]
    copied: list[int]

    @property
    def inserted(self) -> list[int]:
        chosen = set(self.copied)
        return [i for i in range(self.count) if i not in chosen]


def _dependency_plan(jobs: Sequence[NewJob], positions: Sequence[int], ids: Sequence[int],
                     layout: DependencyLayout, locked: dict[int, tuple[str, Any]]) -> dict[str, Any]:
    """The per-job and per-edge arrays of JOBS.insert_dependent_jobs for ``jobs`` (at ``positions``
    of the batch whose ids are ``ids``), from the states of the existing dependencies read under
    their lock.

    Raises:
        InvalidDependency: an existing dependency is unknown (never enqueued, deleted or pruned), or
            failed/cancelled while the dependent's policy is 'cancel'.
    """
    from pgqueue.errors import InvalidDependency
    pending: list[int] = []
    workflow_ids: list[str | None] = []
    edge_jobs: list[int] = []
    edge_dependencies: list[int] = []
    edge_resolved: list[bool] = []
    for position, job in zip(positions, jobs, strict=True):
        job_id = ids[position]
        unresolved = 0
        workflow_id = job.workflow_id
        for dependency in job.depends_on:
            if dependency not in locked:
                raise InvalidDependency(
                    f"job {dependency} does not exist (never enqueued, or deleted or pruned): nothing was enqueued")
            state, dependency_workflow = locked[dependency]
            failed = state in ("failed", "cancelled")
            if failed and job.on_dependency_failure == "cancel":
                raise InvalidDependency(
                    f"job {dependency} is {state}: a job with on_dependency_failure='cancel' cannot depend on it "
                    "(retry it first, or pass on_dependency_failure='run'); nothing was enqueued")
            resolved = state == "completed" or failed
            unresolved += not resolved
            edge_jobs.append(job_id)
            edge_dependencies.append(dependency)
            edge_resolved.append(resolved)
            if workflow_id is None and dependency_workflow is not None:
                workflow_id = str(dependency_workflow)  # a job added to a workflow joins it
        for index in job.depends_on_batch:
            unresolved += 1
            edge_jobs.append(job_id)
            edge_dependencies.append(ids[index])
            edge_resolved.append(False)
        pending.append(unresolved)
        workflow_ids.append(workflow_id)
    return {
        "ids": [ids[p] for p in positions], "pending": pending,
        "has_dependents": [layout.has_dependents[p] for p in positions],
        "policies": [j.on_dependency_failure if j.has_dependencies else None for j in jobs],
        "workflow_ids": workflow_ids,
        "edge_jobs": edge_jobs, "edge_dependencies": edge_dependencies, "edge_resolved": edge_resolved,
    }


def _dependent_params(jobs: Sequence[NewJob], plan: dict[str, Any], actor: str | None) -> dict[str, Any]:
    params = _bulk_params(jobs, actor)
    del params["unique_keys"]
    return {**params, **plan}


def _workflow_copy_lines(rows: JobRowWriter, ids: Sequence[int], layout: DependencyLayout,
                         make_job: Callable[[int], NewJob], queues: set[str]) -> Iterator[str]:
    """Rows of JOBS.copy_workflow_jobs, for the batch positions ``layout.copied``."""
    for i in layout.copied:
        job = make_job(i)
        queues.add(job.queue)
        yield rows.line(ids[i], job, workflow_extra(layout.has_dependents[i], job.workflow_id))


def _write_enqueued_events(cur: psycopg.Cursor[tuple[Any, ...]], ids: Sequence[int], actor: str | None) -> None:
    """The 'enqueued' audit rows of jobs just copied: by COPY where row-level security allows it."""
    row = cur.execute(JOBS.job_events_copyable).fetchone()
    if row is not None and row[0]:
        with cur.copy(JOBS.copy_job_events) as copy:
            for chunk in enqueued_event_chunks(ids, actor):
                copy.write(chunk)
    else:
        cur.execute(JOBS.insert_copied_job_events, {"ids": list(ids), "actor": actor})


async def _write_enqueued_events_async(cur: psycopg.AsyncCursor[tuple[Any, ...]], ids: Sequence[int],
                                       actor: str | None) -> None:
    """Async twin of :func:`_write_enqueued_events`."""
    row = await (await cur.execute(JOBS.job_events_copyable)).fetchone()
    if row is not None and row[0]:
        async with cur.copy(JOBS.copy_job_events) as copy:
            for chunk in enqueued_event_chunks(ids, actor):
                await copy.write(chunk)
    else:
        await cur.execute(JOBS.insert_copied_job_events, {"ids": list(ids), "actor": actor})


class JobStore:
    """Job statements on a psycopg connection owned by someone else (never committed here).

    The enqueue methods read rows by position on cursors of their own row factory: the caller's
    connection may have any (``dict_row`` is common).
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    # --- enqueue ---

    def insert_job(self, job: NewJob, actor: str | None = None) -> int:
        if job.unique_key is None:
            with translate_errors(), cursor_on(self.conn, row_factory=tuple_row) as cur:
                row = cur.execute(JOBS.insert_job, _insert_params(job, actor)).fetchone()
            return _inserted_id(row)
        with translate_errors(), cursor_on(self.conn, row_factory=tuple_row) as cur:
            for _ in range(5):
                cur.execute(JOBS.insert_unique_job, _insert_params(job, actor))
                row = cur.fetchone()
                if row is not None:
                    return int(row[0])
                # Lost a unique_key conflict: return the live job. It may have finished in the
                # meantime, in which case the next INSERT succeeds.
                cur.execute(JOBS.find_live_job_by_unique_key, {"unique_key": job.unique_key})
                existing = cur.fetchone()
                if existing is not None:
                    return int(existing[0])
        raise DatabaseUnavailable(f"could not enqueue unique job {job.unique_key!r}: it kept changing state")

    def insert_jobs(self, jobs: Sequence[NewJob], actor: str | None = None) -> list[int]:
        """One multi-row INSERT; ids in input order (a job that lost a unique_key conflict gets the
        live job's)."""
        if not jobs:
            return []
        with translate_errors(), cursor_on(self.conn, row_factory=tuple_row) as cur:
            cur.execute(JOBS.insert_jobs, _bulk_params(jobs, actor))
            ids, unresolved = _bulk_ids(cur.fetchall())
            for index, key in unresolved:
                cur.execute(JOBS.find_live_job_by_unique_key, {"unique_key": key})
                row = cur.fetchone()
                ids[index] = int(row[0]) if row else self.insert_job(jobs[index], actor)
        return [int(i) for i in ids if i is not None]

    def copy_jobs(self, jobs: Iterable[NewJob], count: int, actor: str | None = None) -> list[int]:
        """Insert ``count`` jobs that :func:`_copyable` accepts with COPY, their audit rows too; ids
        in input order. ``jobs`` may be a generator that validates as it goes: the server then
        writes rows while Python validates the next ones, and a validation error aborts the COPY.
        Four statements: the caller makes them atomic (savepoint or transaction)."""
        queues: set[str] = set()
        with translate_errors(), cursor_on(self.conn, row_factory=tuple_row) as cur:
            cur.execute(JOBS.reserve_job_ids, {"count": count})
            ids: list[int] = [row[0] for row in cur.fetchall()]
            rows = JobRowWriter()
            with cur.copy(JOBS.copy_jobs) as copy:
                for chunk in rows.chunks(_copy_lines(rows, ids, jobs, queues)):
                    copy.write(chunk)
            _write_enqueued_events(cur, ids, actor)
            cur.execute(JOBS.notify_queues, _notify_params(queues))
        return ids

    def insert_dependent_jobs(self, layout: DependencyLayout, make_job: Callable[[int], NewJob],
                              actor: str | None = None) -> list[int]:
        """A batch with dependencies (on existing jobs, or on jobs of the same batch); ids in input
        order. ``make_job(i)`` validates the i-th job: the COPY part validates while the server
        writes, as enqueue_many does. Several statements: run them in a savepoint or transaction."""
        with translate_errors(), cursor_on(self.conn, row_factory=tuple_row) as cur:
            locked: dict[int, tuple[str, Any]] = {}
            if layout.external:
                cur.execute(JOBS.lock_dependencies, {"ids": layout.external})
                locked = {row[0]: (row[1], row[2]) for row in cur.fetchall()}
            cur.execute(JOBS.reserve_job_ids, {"count": layout.count})
            ids = [row[0] for row in cur.fetchall()]
            if layout.copied:
                queues: set[str] = set()
                rows = JobRowWriter()
                with cur.copy(JOBS.copy_workflow_jobs) as copy:
                    for chunk in rows.chunks(_workflow_copy_lines(rows, ids, layout, make_job, queues)):
                        copy.write(chunk)
                _write_enqueued_events(cur, [ids[i] for i in layout.copied], actor)
                cur.execute(JOBS.notify_queues, _notify_params(queues))
            positions = layout.inserted
            if positions:
                rest = [make_job(i) for i in positions]
                plan = _dependency_plan(rest, positions, ids, layout, locked)
                cur.execute(JOBS.insert_dependent_jobs, _dependent_params(rest, plan, actor))
                cur.fetchall()
        return ids

    def insert_dependent_jobs_atomically(self, layout: DependencyLayout, make_job: Callable[[int], NewJob],
                                         actor: str | None = None) -> list[int]:
        """:meth:`insert_dependent_jobs`, all or nothing."""
        return self._atomically(lambda: self.insert_dependent_jobs(layout, make_job, actor))

    def dependency_results(self, job_id: int) -> list[tuple[int, str, str, Any, bytes | None]]:
        """(id, task, state, result, result ciphertext) of the jobs ``job_id`` depends on, in id order."""
        with translate_errors(), cursor_on(self.conn, row_factory=tuple_row) as cur:
            cur.execute(JOBS.dependency_results, {"id": job_id})
            return [(row[0], row[1], row[2], row[3], row[4]) for row in cur.fetchall()]

    def _insert_batch(self, jobs: Sequence[NewJob], actor: str | None) -> list[int]:
        return self.copy_jobs(jobs, len(jobs), actor) if _copyable(jobs) else self.insert_jobs(jobs, actor)

    def insert_job_batches(self, batches: Iterable[Sequence[NewJob]], actor: str | None = None) -> list[int]:
        """Insert batch after batch (with COPY where :func:`_copyable`), all or nothing: an error
        while producing or writing a later batch undoes the earlier ones too, and nothing else of
        the caller's transaction."""
        iterator = iter(batches)
        first = next(iterator, [])
        second = next(iterator, None)
        if second is None and not _copyable(first):  # one statement is atomic by itself
            return self.insert_jobs(first, actor)
        batches = itertools.chain((first,), () if second is None else (second,), iterator)
        return self._atomically(lambda: [job_id for batch in batches for job_id in self._insert_batch(batch, actor)])

    def copy_all_jobs(self, jobs: Iterable[NewJob], count: int, actor: str | None = None) -> list[int]:
        """:meth:`copy_jobs`, all or nothing."""
        return self._atomically(lambda: self.copy_jobs(jobs, count, actor))

    def _atomically(self, write: Callable[[], list[int]]) -> list[int]:
        """Run several statements as one: our own transaction on an autocommit connection, else a
        savepoint that undoes them, and nothing else of the caller's transaction, on error."""
        if self.conn.autocommit:
            with translate_errors(), self.conn.transaction():  # our own BEGIN ... COMMIT
                return write()
        # In the caller's transaction: a savepoint, never conn.transaction(), which would COMMIT an
        # idle connection's implicit transaction for them. SAVEPOINT itself opens that transaction.
        with translate_errors():
            execute_on(self.conn, JOBS.savepoint_enqueue_many)
            try:
                ids = write()
            except BaseException:
                if not self.conn.closed and not self.conn.broken:
                    execute_on(self.conn, JOBS.rollback_to_enqueue_many)
                raise
            execute_on(self.conn, JOBS.release_enqueue_many)
        return ids

    # --- running jobs (the heartbeat thread, transactional handlers) ---

    def complete_jobs(self, outcomes: Sequence[Outcome]) -> set[int]:
        """Write completed outcomes; returns the ids written (the others lost their lease)."""
        with translate_errors():
            rows = execute_on(self.conn, JOBS.complete_jobs, _complete_params(outcomes)).fetchall()
        return {r[0] for r in rows}

    def release_jobs(self, jobs: Sequence[tuple[int, str]], reason: str = "worker shutdown") -> set[int]:
        """:meth:`AsyncJobStore.release_jobs` from a thread: the shutdown watchdog's, when the
        worker's event loop is blocked."""
        with translate_errors():
            rows = execute_on(self.conn, JOBS.release_jobs, _release_params(jobs, reason)).fetchall()
        return {r[0] for r in rows}

    def update_progress(self, updates: Sequence[ProgressRow]) -> None:
        """(job id, lease token, percent, note, note ciphertext) of running jobs; a lost lease is skipped."""
        with translate_errors():
            execute_on(self.conn, JOBS.update_progress, _progress_params(updates))

    # --- an operator's actions (each writes its audit row in the same statement) ---

    def get_job(self, job_id: int) -> dict[str, Any] | None:
        with translate_errors(), cursor_on(self.conn, row_factory=dict_row) as cur:
            cur.execute(JOBS.get_job, {"id": job_id})
            return cur.fetchone()

    def list_jobs_page(self, *, before: int, budget: int, limit: int, indexed_state: str | None,
                       state: str | None, queue: str | None, task: str | None, tag: str | None,
                       since: datetime | None) -> tuple[list[dict[str, Any]], int, int | None, datetime | None]:
        """One page of jobs below ``before``: (matching rows, rows scanned, the lowest id scanned,
        the newest enqueued_at scanned)."""
        params = {"before": before, "budget": budget, "limit": limit, "indexed_state": indexed_state,
                  "state": state, "queue": queue, "task": task, "tag": tag, "since": since}
        with translate_errors(), cursor_on(self.conn, row_factory=dict_row) as cur:
            # Custom plans only: a generic plan cannot drop the unused filters.
            rows = cur.execute(JOBS.list_jobs_page, params, prepare=False).fetchall()
        scanned, lowest, newest = rows[0]["scanned"], rows[0]["lowest_id"], rows[0]["newest_enqueued_at"]
        jobs = [{k: v for k, v in row.items() if k not in ("scanned", "lowest_id", "newest_enqueued_at")}
                for row in rows if row["id"] is not None]
        return jobs, int(scanned), lowest, newest

    def find_cancelled_jobs(self, ids: Sequence[int]) -> list[int]:
        """Which of ``ids`` are cancelled (the heartbeat's check on the jobs its worker runs)."""
        with translate_errors():
            rows = execute_on(self.conn, JOBS.find_cancelled_jobs, {"ids": list(ids)}).fetchall()
        return [int(r[0]) for r in rows]

    def job_state(self, job_id: int) -> str | None:
        with translate_errors():
            row = execute_on(self.conn, JOBS.get_job_state, {"id": job_id}).fetchone()
        return row[0] if row else None

    # ``source`` (cli, web, api: where an operator's action came from) is recorded in the audit
    # row's detail by the statements below; None leaves it out.

    def retry_jobs(self, ids: Sequence[int] | None, queue: str | None, only_failed: bool,
                   actor: str | None, source: str | None = None) -> Retried:
        with translate_errors():
            rows = execute_on(self.conn, JOBS.retry_jobs, {
                "ids": list(ids) if ids is not None else None, "queue": queue,
                "only_failed": only_failed, "actor": actor, "source": source, "channel": NOTIFY_CHANNEL,
            }).fetchall()
            retried = sorted(r[0] for r in rows if r[1])
            if retried:
                # A separate statement: the dependents the retry revived are waiting only once the
                # retry's own statement (and its settle trigger) has ended.
                execute_on(self.conn, JOBS.cancel_stranded_dependents, {
                    "ids": retried, "actor": actor, "source": source, "done_channel": DONE_CHANNEL}).fetchall()
        return Retried(retried=retried, skipped=sorted(r[0] for r in rows if not r[1]))

    def live_job_with_unique_key(self, unique_key: str) -> int | None:
        """The scheduled, available or running job that holds ``unique_key``, if any."""
        with translate_errors(), cursor_on(self.conn, row_factory=tuple_row) as cur:
            row = cur.execute(JOBS.find_live_job_by_unique_key, {"unique_key": unique_key}).fetchone()
        return None if row is None else int(row[0])

    def task_is_encrypted(self, task: str) -> bool:
        """Whether a started worker's code declares ``task`` with ``encrypt=True`` (``pgqueue.encrypted_tasks``)."""
        with translate_errors(), cursor_on(self.conn, row_factory=tuple_row) as cur:
            row = cur.execute(JOBS.task_is_encrypted, {"task": task}).fetchone()
        return bool(row and row[0])

    def cancel_job(self, job_id: int, actor: str | None, source: str | None = None) -> tuple[str | None, bool]:
        with translate_errors():
            row = execute_on(self.conn, JOBS.cancel_job, {"id": job_id, "actor": actor, "source": source,
                                                      "done_channel": DONE_CHANNEL,
                                                      "cancel_channel": CANCEL_CHANNEL}).fetchone()
        if row is None:
            return None, False
        return row[0], bool(row[1])

    def delete_job(self, job_id: int, actor: str | None, source: str | None = None) -> bool:
        with translate_errors():
            params = {"id": job_id, "actor": actor, "source": source}
            return execute_on(self.conn, JOBS.delete_job, params).fetchone() is not None

    def purge_queue(self, queue: str, state: str | None, actor: str | None, source: str | None = None) -> int:
        with translate_errors():
            params = {"queue": queue, "state": state, "actor": actor, "source": source}
            row = execute_on(self.conn, JOBS.purge_queue, params).fetchone()
        return int(row[0]) if row else 0


class AsyncJobStore:
    """The async twin of :class:`JobStore`: ``enqueue_async`` and the worker's claim/ack loop."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    # --- enqueue ---

    async def insert_job(self, job: NewJob, actor: str | None = None) -> int:
        if job.unique_key is None:
            with translate_errors():
                async with async_cursor_on(self.conn, row_factory=tuple_row) as cur:
                    await cur.execute(JOBS.insert_job, _insert_params(job, actor))
                    row = await cur.fetchone()
            return _inserted_id(row)
        with translate_errors():
            async with async_cursor_on(self.conn, row_factory=tuple_row) as cur:
                for _ in range(5):
                    await cur.execute(JOBS.insert_unique_job, _insert_params(job, actor))
                    row = await cur.fetchone()
                    if row is not None:
                        return int(row[0])
                    await cur.execute(JOBS.find_live_job_by_unique_key, {"unique_key": job.unique_key})
                    existing = await cur.fetchone()
                    if existing is not None:
                        return int(existing[0])
        raise DatabaseUnavailable(f"could not enqueue unique job {job.unique_key!r}: it kept changing state")

    async def insert_jobs(self, jobs: Sequence[NewJob], actor: str | None = None) -> list[int]:
        if not jobs:
            return []
        with translate_errors():
            async with async_cursor_on(self.conn, row_factory=tuple_row) as cur:
                await cur.execute(JOBS.insert_jobs, _bulk_params(jobs, actor))
                ids, unresolved = _bulk_ids(await cur.fetchall())
                for index, key in unresolved:
                    await cur.execute(JOBS.find_live_job_by_unique_key, {"unique_key": key})
                    row = await cur.fetchone()
                    ids[index] = int(row[0]) if row else await self.insert_job(jobs[index], actor)
        return [int(i) for i in ids if i is not None]

    async def copy_jobs(self, jobs: Iterable[NewJob], count: int, actor: str | None = None) -> list[int]:
        queues: set[str] = set()
        with translate_errors():
            async with async_cursor_on(self.conn, row_factory=tuple_row) as cur:
                await cur.execute(JOBS.reserve_job_ids, {"count": count})
                ids: list[int] = [row[0] for row in await cur.fetchall()]
                rows = JobRowWriter()
                async with cur.copy(JOBS.copy_jobs) as copy:
                    for chunk in rows.chunks(_copy_lines(rows, ids, jobs, queues)):
                        await copy.write(chunk)
                await _write_enqueued_events_async(cur, ids, actor)
                await cur.execute(JOBS.notify_queues, _notify_params(queues))
        return ids

    async def insert_dependent_jobs_atomically(self, layout: DependencyLayout, make_job: Callable[[int], NewJob],
                                               actor: str | None = None) -> list[int]:
        """The async twin of :meth:`JobStore.insert_dependent_jobs_atomically`."""

        async def write() -> list[int]:
            async with async_cursor_on(self.conn, row_factory=tuple_row) as cur:
                locked: dict[int, tuple[str, Any]] = {}
                if layout.external:
                    await cur.execute(JOBS.lock_dependencies, {"ids": layout.external})
                    locked = {row[0]: (row[1], row[2]) for row in await cur.fetchall()}
                await cur.execute(JOBS.reserve_job_ids, {"count": layout.count})
                ids = [row[0] for row in await cur.fetchall()]
                if layout.copied:
                    queues: set[str] = set()
                    rows = JobRowWriter()
                    async with cur.copy(JOBS.copy_workflow_jobs) as copy:
                        for chunk in rows.chunks(_workflow_copy_lines(rows, ids, layout, make_job, queues)):
                            await copy.write(chunk)
                    await _write_enqueued_events_async(cur, [ids[i] for i in layout.copied], actor)
                    await cur.execute(JOBS.notify_queues, _notify_params(queues))
                positions = layout.inserted
                if positions:
                    rest = [make_job(i) for i in positions]
                    plan = _dependency_plan(rest, positions, ids, layout, locked)
                    await cur.execute(JOBS.insert_dependent_jobs, _dependent_params(rest, plan, actor))
                    await cur.fetchall()
            return ids

        return await self._atomically(write)

    async def _insert_batch(self, jobs: Sequence[NewJob], actor: str | None) -> list[int]:
        if _copyable(jobs):
            return await self.copy_jobs(jobs, len(jobs), actor)
        return await self.insert_jobs(jobs, actor)

    async def insert_job_batches(self, batches: Iterable[Sequence[NewJob]], actor: str | None = None) -> list[int]:
        iterator = iter(batches)
        first = next(iterator, [])
        second = next(iterator, None)
        if second is None and not _copyable(first):  # one statement is atomic by itself
            return await self.insert_jobs(first, actor)
        batches = itertools.chain((first,), () if second is None else (second,), iterator)

        async def write() -> list[int]:
            return [job_id for batch in batches for job_id in await self._insert_batch(batch, actor)]

        return await self._atomically(write)

    async def _atomically(self, write: Callable[[], Awaitable[list[int]]]) -> list[int]:
        if self.conn.autocommit:
            with translate_errors():
                async with self.conn.transaction():  # our own BEGIN ... COMMIT
                    return await write()
        # A savepoint in the caller's transaction, as in JobStore._atomically.
        with translate_errors():
            await async_execute_on(self.conn, JOBS.savepoint_enqueue_many)
            try:
                ids = await write()
            except BaseException:
                if not self.conn.closed and not self.conn.broken:
                    await async_execute_on(self.conn, JOBS.rollback_to_enqueue_many)
                raise
            await async_execute_on(self.conn, JOBS.release_enqueue_many)
        return ids

    # --- the worker's claim and ack sessions ---

    async def get_job(self, job_id: int) -> dict[str, Any] | None:
        """One job as an operator sees it (``pgqueue.admin.wait_for_job_async``)."""
        with translate_errors():
            async with async_cursor_on(self.conn, row_factory=dict_row) as cur:
                await cur.execute(JOBS.get_job, {"id": job_id})
                return await cur.fetchone()

    async def claim_jobs(self, queues: Sequence[str] | None, limit: int, worker_id: str, *,
                         except_tasks: Sequence[str] = ()) -> list[Job]:
        """Claim jobs that no limit holds back: of ``queues`` (None: every queue), not of a paused or
        limited queue, and not of the limited tasks ``except_tasks``."""
        if not 1 <= limit <= CLAIM_BATCH_MAX:
            raise ValueError(f"a claim takes 1 to {CLAIM_BATCH_MAX} jobs, not {limit}")
        token = str(uuid.uuid4())
        params: dict[str, Any] = {"limit": limit, "worker_id": worker_id, "lease_token": token}
        except_limited_tasks = bool(except_tasks)
        if except_limited_tasks:
            params["limited_tasks"] = list(except_tasks)
        if queues:
            params["queues"] = list(queues)
            query = JOBS.claim_jobs_except_limited_tasks if except_limited_tasks else JOBS.claim_jobs
        elif except_limited_tasks:
            query = JOBS.claim_jobs_any_queue_except_limited_tasks
        else:
            query = JOBS.claim_jobs_any_queue
        with translate_errors():
            cur = await async_execute_on(self.conn, query, params)
            rows = await cur.fetchall()
        return [_job_from_row(row, token) for row in rows]

    async def list_limited_scopes(self) -> tuple[list[str], list[str]]:
        """(limited queues, limited tasks) as the database has them now."""
        with translate_errors():
            cur = await async_execute_on(self.conn, JOBS.list_limited_scopes)
            rows = await cur.fetchall()
        return [r[1] for r in rows if r[0] == "queue"], [r[1] for r in rows if r[0] == "task"]

    async def claim_limited_queue_jobs(self, queue: str, limit: int, worker_id: str,
                                       except_tasks: Sequence[str] = ()) -> LimitedClaim:
        """Claim up to ``limit`` jobs of a limited queue, within its limits, under its lock; the
        limited tasks ``except_tasks`` are left to their own claim."""
        token = str(uuid.uuid4())
        params: dict[str, Any] = {"queue": queue, "limit": limit, "worker_id": worker_id, "lease_token": token}
        if except_tasks:
            params["limited_tasks"] = list(except_tasks)
            query, plan_cache_mode = JOBS.claim_limited_queue_jobs, "auto"
        else:
            query, plan_cache_mode = JOBS.claim_limited_queue_jobs_all_tasks, "force_generic_plan"
        with translate_errors():
            async with _pipelined_transaction(self.conn):
                await async_execute_on(self.conn, JOBS.lock_queue_limits,
                                       {"queue": queue, "plan_cache_mode": plan_cache_mode})
                cur = await async_execute_on(self.conn, query, params)
            rows = await cur.fetchall()
        allowance, headroom, waiting = (int(rows[0][0]), int(rows[0][1]), bool(rows[0][2])) if rows else (0, 0, False)
        jobs = [_job_from_row(row[3:], token) for row in rows if row[3] is not None]
        return LimitedClaim(jobs, allowance < limit and waiting, headroom)

    async def claim_limited_task_jobs(self, task: str, queues: Sequence[str] | None, limit: int,
                                      worker_id: str) -> tuple[list[Job], int]:
        """Claim up to ``limit`` jobs of a limited task from ``queues`` (None: every queue), within
        the task's limits (concurrency, rate, groups) and those of limited queues, under their locks.

        Returns the jobs and how many of the task's jobs were claimable (claimed ones included).
        """
        token = str(uuid.uuid4())
        names = list(queues) if queues else None
        params = {"task": task, "queues": names, "limit": limit, "worker_id": worker_id, "lease_token": token}
        with translate_errors():
            async with _pipelined_transaction(self.conn):
                await async_execute_on(self.conn, JOBS.lock_task_limits, {"task": task, "queues": names})
                cur = await async_execute_on(self.conn, JOBS.claim_limited_task_jobs, params)
            rows = await cur.fetchall()
        return _limited_claim(rows, token)

    async def sync_task_limits(self, limits: Sequence[TaskLimits]) -> None:
        """Store the limits the worker's code declares (a task with none loses its row)."""
        if not limits:
            return
        with translate_errors():
            await async_execute_on(self.conn, JOBS.sync_task_limits, {
                "tasks": [t.task for t in limits], "concurrency": [t.concurrency for t in limits],
                "rate_limits": [t.rate_limit for t in limits], "rate_periods": [t.rate_period_seconds for t in limits],
                "group_concurrency": [t.group_concurrency for t in limits],
            })

    async def sync_encrypted_tasks(self, declared: Mapping[str, bool]) -> None:
        """Record which of the worker's tasks its code declares ``encrypt=True`` (task name: encrypt)."""
        if not declared:
            return
        with translate_errors():
            await async_execute_on(self.conn, JOBS.sync_encrypted_tasks, {
                "tasks": list(declared), "encrypt": [bool(flag) for flag in declared.values()]})

    async def complete_jobs(self, outcomes: Sequence[Outcome]) -> set[int]:
        with translate_errors():
            cur = await async_execute_on(self.conn, JOBS.complete_jobs, _complete_params(outcomes))
            rows = await cur.fetchall()
        return {r[0] for r in rows}

    async def outcomes_already_written(self, outcomes: Sequence[Outcome]) -> set[int]:
        """Ids of ``outcomes`` the database already holds: an ack re-sent after its commit landed
        but the reply was lost (see ``outcomes_already_written`` in jobs.sql)."""
        if not outcomes:
            return set()
        with translate_errors():
            cur = await async_execute_on(self.conn, JOBS.outcomes_already_written, {
                "ids": [o.job_id for o in outcomes], "tokens": [o.token for o in outcomes],
                "states": [o.state for o in outcomes]})
            rows = await cur.fetchall()
        return {r[0] for r in rows}

    async def fail_jobs(self, outcomes: Sequence[Outcome]) -> set[int]:
        with translate_errors():
            cur = await async_execute_on(self.conn, JOBS.fail_jobs, _fail_params(outcomes))
            rows = await cur.fetchall()
        return {r[0] for r in rows}

    async def release_lost_claims(self, worker_id: str, tracked: Sequence[int]) -> list[int]:
        with translate_errors():
            cur = await async_execute_on(self.conn, JOBS.release_lost_claims, {
                "worker_id": worker_id, "tracked": list(tracked), "channel": NOTIFY_CHANNEL})
            rows = await cur.fetchall()
        return [r[0] for r in rows]

    async def release_jobs(self, jobs: Sequence[tuple[int, str]], reason: str = "worker shutdown") -> set[int]:
        """Hand (id, lease token) ``jobs`` back to ``available`` uncounted, each with its audit row;
        returns the ids released (the others ended or lost their lease meanwhile)."""
        with translate_errors():
            cur = await async_execute_on(self.conn, JOBS.release_jobs, _release_params(jobs, reason))
            rows = await cur.fetchall()
        return {r[0] for r in rows}

    async def has_pending_jobs(self, queues: Sequence[str] | None) -> bool:
        """Whether a job of ``queues`` (None: any) runs, or is or becomes claimable without waiting:
        jobs scheduled in the future and jobs of paused queues do not count."""
        with translate_errors():
            cur = await async_execute_on(self.conn, JOBS.find_pending_job, {"queues": list(queues) if queues else None})
            row = await cur.fetchone()
        return row is not None
