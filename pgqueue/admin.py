"""Operate pgqueue from Python: inspect, wait for, retry, cancel and delete jobs; pause, purge and
limit queues; list workers, schedules and circuit breakers, reset a breaker; check health.

Every function takes the caller's connection first, like :meth:`pgqueue.App.enqueue`: a psycopg
``Connection`` or a SQLAlchemy ``Session``/``Connection`` (psycopg driver). It runs in the
caller's transaction and never commits it: commit and the change is made, roll back and it never
happened. Results are frozen dataclasses; errors are :mod:`pgqueue.errors` types
(:class:`~pgqueue.errors.JobNotFound`, :class:`~pgqueue.errors.InvalidJobState`,
:class:`~pgqueue.errors.QueueNotFound`, ...), raised before anything is changed.

Every action writes its row in ``pgqueue.job_events`` in the same transaction, with ``actor``
(who: by default the OS user of the calling process) and, in the row's ``detail``, ``source``
(where the action came from: ``api`` by default, ``cli`` from the ``pgqueue`` command, ``web``
from the dashboard and HTTP API).

Reads stay cheap on large tables: :func:`list_jobs` walks at most a fixed number of rows per page
down an index, and :func:`list_queues` counts only live jobs and the dead-letter set, each through
its partial index. (The ``pgqueue.queue_stats`` view has exact all-time totals, at the price of
reading every job.)

Example:
    >>> import psycopg, pgqueue.admin as admin
    >>> with psycopg.connect(dsn) as conn:
    ...     for job in admin.list_jobs(conn, state="failed", queue="emails").items:
    ...         admin.retry_job(conn, job.id, actor="alice")
"""

from __future__ import annotations

import base64
import binascii
import getpass
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from enum import Enum
from typing import Any, Generic, Literal, TypeVar

from pgqueue import _retention
from pgqueue._db.audit import AuditStore
from pgqueue._db.breakers import BreakerStore
from pgqueue._db.connections import async_connection, sync_connection
from pgqueue._db.errors import translate_errors
from pgqueue._db.jobs import AsyncJobStore, JobStore
from pgqueue._db.notifications import async_done_listener, done_listener, listener_dsn
from pgqueue._db.queues import QueueStore
from pgqueue._db.reports import REPORTS, run_report
from pgqueue._db.server import ServerStore
from pgqueue._db.sessions import connect
from pgqueue._db.workers import WorkerStore
from pgqueue._db.workflows import WorkflowStore
from pgqueue._humanize import format_seconds, whole_number
from pgqueue._payload import check_queue_name
from pgqueue.errors import (
    BreakerNotFound,
    ConfigurationError,
    InvalidFilter,
    InvalidJobState,
    InvalidQueueLimits,
    JobNotFound,
    JobWaitTimeout,
    PgqueueError,
    QueueNotFound,
    SchemaNotReady,
    WorkflowNotFound,
)
from pgqueue.jobs import CANCELLABLE_STATES, FINISHED_STATES, JobState
from pgqueue.settings import MAX_DURATION_SECONDS, Settings, parse_duration, redact_dsn

__all__ = [
    "UNCHANGED",
    "BreakerInfo",
    "HealthCheck",
    "HealthReport",
    "JobChange",
    "JobEvent",
    "JobRecord",
    "Page",
    "PruneReport",
    "QueueInfo",
    "RetriedJobs",
    "ScheduleInfo",
    "TaskLimitsInfo",
    "WorkerInfo",
    "WorkflowHead",
    "WorkflowInfo",
    "WorkflowJob",
    "cancel_job",
    "cancel_workflow",
    "delete_job",
    "format_rate",
    "get_job",
    "get_workflow",
    "get_workflow_head",
    "health",
    "list_breakers",
    "list_job_events",
    "list_jobs",
    "list_queues",
    "list_schedules",
    "list_task_limits",
    "list_workers",
    "notification_queue_usage",
    "parse_rate",
    "pause_queue",
    "prune",
    "purge_queue",
    "report",
    "reset_breaker",
    "resume_queue",
    "retry_failed",
    "retry_job",
    "retry_workflow",
    "set_queue_limits",
    "wait_for_job",
    "wait_for_job_async",
]

T = TypeVar("T")

MAX_PAGE_SIZE = 1000
#: Rows :func:`list_jobs` examines per page at most (the filters then apply to those).
SCAN_BUDGET = 20_000
_MAX_BIGINT = 2**63 - 1
_CURSOR_PREFIX = "j1:"
_MAX_TASK_LENGTH = 255
_MAX_TAG_LENGTH = 128
_MAX_CONCURRENCY = 1_000_000
_MAX_RATE = 1_000_000_000
_MAX_RATE_PERIOD = 7 * 86400
# States whose partial index lists_jobs walks instead of the primary key (completed has none: it
# is most of the table, so the primary key finds its rows as fast).
_INDEXED_STATES = frozenset({"waiting", "scheduled", "available", "running", "failed", "cancelled"})


class _Unchanged(Enum):
    UNCHANGED = "unchanged"

    def __repr__(self) -> str:
        return "UNCHANGED"


#: For :func:`set_queue_limits`: leave this limit as it is (``None`` clears it).
UNCHANGED = _Unchanged.UNCHANGED


def default_actor() -> str:
    """The OS user of this process: the ``actor`` of an action when the caller names none."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (e.g. an arbitrary uid in a container)
        return f"uid:{os.getuid()}"


def _actor(actor: str | None) -> str:
    return actor if actor is not None else default_actor()


#: ``source`` of an action taken through this module directly (the CLI passes ``cli``, the web ``web``).
DEFAULT_SOURCE = "api"
_MAX_SOURCE_LENGTH = 32


def _source(source: str) -> str:
    if not isinstance(source, str) or not re.fullmatch(r"[a-z][a-z0-9_.-]*", source) \
            or len(source) > _MAX_SOURCE_LENGTH:
        raise ConfigurationError(f"source {source!r} must be a short lowercase label such as 'api', 'cli' or 'web' "
                                 f"(letters, digits, '_', '.', '-'; at most {_MAX_SOURCE_LENGTH} characters)")
    return source


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRecord:
    """One row of ``pgqueue.jobs`` as an operator sees it (see ``sql/README.md`` for the columns).

    For an encrypted job ``args``, ``result`` and ``progress_note`` are None and ``last_error`` holds
    only the error's type: the flags say which payloads exist only as ciphertext. Nothing here ever
    decrypts.
    """

    id: int
    task: str
    queue: str
    state: str
    priority: int
    args: dict[str, Any] | None
    attempt: int
    max_attempts: int
    run_at: datetime
    enqueued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: float | None
    progress_note: str | None
    result: Any
    last_error: dict[str, Any] | None
    unique_key: str | None
    tags: tuple[str, ...]
    worker_id: str | None
    args_encrypted: bool = False
    result_encrypted: bool = False
    error_encrypted: bool = False
    #: The group it was enqueued in (``group="patient:42"``), None outside groups.
    group_key: str | None = None
    #: An encrypted job's progress note exists, only as ciphertext (``progress_note`` is None).
    progress_note_encrypted: bool = False

    @property
    def finished(self) -> bool:
        """Completed, failed or cancelled: nothing more happens to it unless someone retries it."""
        return self.state in FINISHED_STATES

    @property
    def encrypted(self) -> bool:
        return self.args_encrypted or self.result_encrypted or self.error_encrypted or self.progress_note_encrypted

    def as_dict(self) -> dict[str, Any]:
        """Every field, tags as a list: ready for JSON (datetimes left as datetimes)."""
        data = asdict(self)
        data["tags"] = list(self.tags)
        return data


@dataclass(frozen=True)
class JobEvent:
    """One row of a job's audit trail (``pgqueue.job_events``); ``seal_no`` is the seal covering it."""

    id: int
    job_id: int | None
    at: datetime
    event: str
    from_state: str | None
    to_state: str | None
    attempt: int | None
    worker_id: str | None
    actor: str | None
    detail: Any
    seal_no: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing. ``next_cursor`` continues it (None: nothing older is left).

    A page can hold fewer items than asked, even none, and still have a ``next_cursor``: each page
    examines a bounded number of jobs, and a rare filter may match none of them. Keep following
    ``next_cursor`` until it is None to see everything.
    """

    items: tuple[T, ...]
    next_cursor: str | None
    scanned: int = 0


@dataclass(frozen=True)
class JobChange:
    """What an action did to a job: its state before and after (None after: deleted)."""

    id: int
    previous_state: str
    state: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RetriedJobs(list[int]):
    """What :func:`retry_failed` returns: the ids of the jobs it retried, in id order (a ``list``
    of them, as it always was), and in ``skipped`` the ids of the failed jobs it left failed
    because a live job holds their ``unique_key`` (possibly one this same call brought back).

    Example:
        >>> retried = admin.retry_failed(conn, queue="reports")
        >>> retried, retried.skipped
        ([17, 23], [12])
    """

    skipped: list[int]

    def __init__(self, retried: Iterable[int] = (), skipped: Iterable[int] = ()) -> None:
        super().__init__(retried)
        self.skipped = list(skipped)

    def as_dict(self) -> dict[str, Any]:
        """The shape the CLI's ``--json`` and the HTTP API answer with (``skipped`` and
        ``skipped_count`` added beside the original ``retried`` and ``count``)."""
        return {"retried": list(self), "count": len(self), "skipped": list(self.skipped),
                "skipped_count": len(self.skipped)}


@dataclass(frozen=True)
class QueueInfo:
    """A queue now: settings, live and dead-letter counts, lag, and what finished in the last hour.

    Attributes:
        lag_seconds: how long the oldest available job has waited to be claimed (None: none waits).
        concurrency, rate_limit, rate_period_seconds: the limits :func:`set_queue_limits` stored
            (None: unlimited), enforced by the claim across every worker.
        completed_last_hour, failed_last_hour: jobs that ended completed / failed in the last hour.
    """

    name: str
    paused: bool
    concurrency: int | None
    rate_limit: int | None
    rate_period_seconds: int | None
    scheduled: int
    available: int
    running: int
    failed: int
    cancelled: int
    lag_seconds: float | None
    completed_last_hour: int = 0
    failed_last_hour: int = 0
    #: Starts in the rate window now (rate-limited queues only, else None).
    starts_in_window: int | None = None
    #: jobs waiting for their dependencies (pgqueue.workflows)
    waiting: int = 0

    @property
    def rate(self) -> str | None:
        """The rate limit as :func:`parse_rate` reads it (``"20/s"``), or None."""
        if self.rate_limit is None or self.rate_period_seconds is None:
            return None
        return format_rate(self.rate_limit, self.rate_period_seconds)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"rate": self.rate}


@dataclass(frozen=True)
class TaskLimitsInfo:
    """A task's limits as declared in code (``@app.task(concurrency=..., rate=..., group_concurrency=...)``)
    and stored by the workers at start, with its usage now across every worker.

    Attributes:
        running: the task's jobs running now.
        starts_in_window: starts in the rate window now (None without a rate limit).
    """

    task: str
    concurrency: int | None
    rate_limit: int | None
    rate_period_seconds: int | None
    group_concurrency: int | None
    running: int
    starts_in_window: int | None
    updated_at: datetime

    @property
    def rate(self) -> str | None:
        """The rate limit as written (``"100/m"``), or None."""
        if self.rate_limit is None or self.rate_period_seconds is None:
            return None
        return format_rate(self.rate_limit, self.rate_period_seconds)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"rate": self.rate}


@dataclass(frozen=True)
class WorkerInfo:
    """A registered worker process and its heartbeat (``alive``: its lease has not expired)."""

    id: str
    hostname: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    started_at: datetime
    heartbeat_at: datetime
    lease_expires_at: datetime
    alive: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"queues": list(self.queues)}


@dataclass(frozen=True)
class ScheduleInfo:
    """A cron schedule (``state``: active, paused or disabled); ``next_run_at`` is its next fire time."""

    name: str
    cron: str
    timezone: str
    task: str
    queue: str
    paused: bool
    state: str
    next_run_at: datetime | None
    last_run_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BreakerInfo:
    """A task's circuit breaker (see :mod:`pgqueue.breakers`).

    Attributes:
        state: ``closed``, ``open`` or ``half_open``.
        failures: failed attempts within the last ``window_seconds``.
        opened_at: when it last opened (None while closed).
        trial_at: while open, when a half-open trial becomes due.
        trial_job_id: while half-open, the trial job.
    """

    task: str
    state: str
    failures: int
    failure_threshold: int
    window_seconds: float
    cooldown_seconds: float
    opened_at: datetime | None
    trial_at: datetime | None
    trial_job_id: int | None
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HealthCheck:
    name: str
    status: Literal["ok", "warn", "fail", "skipped"]  # only fail makes the whole unhealthy
    detail: str


@dataclass(frozen=True)
class HealthReport:
    checks: tuple[HealthCheck, ...] = field(default_factory=tuple)

    @property
    def healthy(self) -> bool:
        return all(check.status != "fail" for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "checks": [asdict(check) for check in self.checks]}


def _job(row: dict[str, Any]) -> JobRecord:
    fields: dict[str, Any] = {name: row.get(name) for name in JobRecord.__dataclass_fields__}
    fields["tags"] = tuple(row.get("tags") or ())
    for flag in ("args_encrypted", "result_encrypted", "error_encrypted", "progress_note_encrypted"):
        fields[flag] = bool(row.get(flag))
    return JobRecord(**fields)


def _queue(row: dict[str, Any], recent: dict[str, tuple[int, int]]) -> QueueInfo:
    completed, failed = recent.get(row["queue"], (0, 0))
    return QueueInfo(
        name=row["queue"], paused=row["paused"], concurrency=row["concurrency"], rate_limit=row["rate_limit"],
        rate_period_seconds=row["rate_period_seconds"], scheduled=int(row["scheduled"]),
        available=int(row["available"]), running=int(row["running"]), failed=int(row["failed"]),
        cancelled=int(row["cancelled"]), lag_seconds=row["lag_seconds"], completed_last_hour=completed,
        failed_last_hour=failed, waiting=int(row.get("waiting") or 0))


# --- checks -----------------------------------------------------------------------------------


def _check_job_id(job_id: int) -> int:
    if isinstance(job_id, bool) or not isinstance(job_id, int) or not 1 <= job_id <= _MAX_BIGINT:
        raise JobNotFound(f"job id {job_id!r} must be a positive integer")
    return job_id


def _check_state(state: str | None, allowed: Sequence[str] = tuple(JobState)) -> str | None:
    if state is None:
        return None
    wanted = str(state).strip().lower()
    if wanted not in allowed:
        raise InvalidFilter(f"state {state!r} is not valid here; valid states: {', '.join(allowed)}")
    return wanted


def _check_text(value: str | None, name: str, max_length: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= max_length or "\x00" in value:
        raise InvalidFilter(f"{name} {value!r} must be a non-empty string of at most {max_length} characters")
    return value


def _encode_cursor(before: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{before}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    number = whole_number(text.removeprefix(_CURSOR_PREFIX))
    if not text.startswith(_CURSOR_PREFIX) or number is None or not 1 <= number <= _MAX_BIGINT:
        raise InvalidFilter(f"cursor {cursor!r} is not one this API returned: pass next_cursor as it came")
    return number


def parse_rate(rate: str) -> tuple[int, int]:
    """A rate limit as people write it: ``N/s``, ``N/m``, ``N/h``, or ``N/<duration>`` (``100/30s``).

    Returns:
        (N, the period in whole seconds).

    Raises:
        InvalidQueueLimits: anything else (``10/fortnight``, ``0/s``, ``5/0.5s``).

    Example:
        >>> parse_rate("100/30s")
        (100, 30)
    """
    rule = "rate {!r} must look like N/s, N/m, N/h or N/<duration> such as 100/30s (N a whole number >= 1)"
    match = re.fullmatch(r"\s*([0-9]+)\s*/\s*(\S+)\s*", rate) if isinstance(rate, str) else None
    if match is None:
        raise InvalidQueueLimits(rule.format(rate))
    count, period = whole_number(match.group(1)), match.group(2).lower()
    if period in {"s", "m", "h", "d"}:
        period = f"1{period}"
    try:
        seconds = parse_duration(period, "rate period")
    except ConfigurationError:
        raise InvalidQueueLimits(rule.format(rate)) from None
    if count is None or not 1 <= count <= _MAX_RATE:
        raise InvalidQueueLimits(f"rate {rate!r}: N must be between 1 and {_MAX_RATE:,}")
    # The range first: int() of an infinite period (a few hundred digits) raises OverflowError.
    if seconds is None or not 1 <= seconds <= _MAX_RATE_PERIOD or seconds != int(seconds):
        raise InvalidQueueLimits(f"rate {rate!r}: the period must be a whole number of seconds from 1s to 7d")
    return count, int(seconds)


def format_rate(limit: int, period_seconds: int) -> str:
    """The inverse of :func:`parse_rate`: ``20/s``, ``100/m``, ``5/h``, ``100/30s``."""
    units = {1: "s", 60: "m", 3600: "h", 86400: "d"}
    if period_seconds in units:
        return f"{limit}/{units[period_seconds]}"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if period_seconds % size == 0:
            return f"{limit}/{period_seconds // size}{unit}"
    return f"{limit}/{period_seconds}s"


def _check_concurrency(concurrency: int | None) -> int | None:
    if concurrency is None:
        return None
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= _MAX_CONCURRENCY:
        raise InvalidQueueLimits(f"concurrency {concurrency!r} must be a whole number from 1 to {_MAX_CONCURRENCY:,} "
                                 "(no limit: None in Python, none in the CLI, null in JSON; to stop a queue, pause it)")
    return concurrency


def _require_queue(conn: Any, queue: str, create: bool, *, creatable: bool = True) -> None:
    check_queue_name(queue)
    if not create and not QueueStore(conn).exists(queue):
        # The hint names the option on every surface (this message reaches the CLI and the API as is),
        # and only where the call has one.
        hint = (" (to configure a queue before its first job: create=True in Python, --create in the CLI, "
                "\"create\": true in the HTTP API)") if creatable else ""
        raise QueueNotFound(f"queue {queue!r} not found: it has no jobs and no settings{hint}")


# --- jobs -------------------------------------------------------------------------------------


def get_job(conn: Any, job_id: int) -> JobRecord:
    """One job by id.

    Raises:
        JobNotFound: no job has that id (it may have been deleted or pruned).

    Example:
        >>> job = admin.get_job(conn, 42)
        >>> job.state, job.result
        ('completed', {'delivered': True})
    """
    row = JobStore(sync_connection(conn)).get_job(_check_job_id(job_id))
    if row is None:
        raise JobNotFound(f"job {job_id} not found")
    return _job(row)


def list_job_events(conn: Any, job_id: int) -> list[JobEvent]:
    """A job's audit trail, oldest first (empty once retention pruned it).

    Example:
        >>> [e.event for e in admin.list_job_events(conn, 42)]
        ['enqueued', 'claimed', 'completed']
    """
    rows = AuditStore(sync_connection(conn)).list_job_events(_check_job_id(job_id))
    return [JobEvent(**row) for row in rows]


def list_jobs(conn: Any, *, queue: str | None = None, task: str | None = None, state: str | None = None,
              tag: str | None = None, since: datetime | None = None, cursor: str | None = None,
              limit: int = 50) -> Page[JobRecord]:
    """Jobs newest first (by id), filtered, one page at a time.

    Each page examines at most :data:`SCAN_BUDGET` jobs, walking the primary key (or, for a state
    other than completed, that state's partial index) down from the cursor, so a page costs the
    same on a table of a thousand jobs or a hundred million. Jobs enqueued after the first page
    never appear on later pages (ids only grow), so paging has no duplicates and no gaps.

    Args:
        queue, task, state, tag: exact matches (``tag``: the job carries this tag).
        since: only jobs enqueued at or after this aware datetime.
        cursor: ``next_cursor`` of the previous page.
        limit: page size, 1 to 1000.

    Raises:
        InvalidFilter: a malformed filter, cursor or page size (nothing is read).
        InvalidQueueName: ``queue`` breaks the queue-name rule.

    Example:
        >>> page = admin.list_jobs(conn, state="failed", limit=100)
        >>> while page.next_cursor:
        ...     page = admin.list_jobs(conn, state="failed", limit=100, cursor=page.next_cursor)
    """
    if queue is not None:
        check_queue_name(queue)
    wanted = _check_state(state)
    _check_text(task, "task", _MAX_TASK_LENGTH)
    _check_text(tag, "tag", _MAX_TAG_LENGTH)
    if since is not None and (not isinstance(since, datetime) or since.utcoffset() is None):
        raise InvalidFilter(f"since {since!r} must be a timezone-aware datetime")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidFilter(f"limit {limit!r} must be between 1 and {MAX_PAGE_SIZE}")
    before = _decode_cursor(cursor) if cursor is not None else _MAX_BIGINT
    indexed = wanted if wanted in _INDEXED_STATES else None
    # Without other filters every candidate matches: walk only as far as the page needs.
    filtered = any(value is not None for value in (queue, task, tag, since)) or (wanted is not None and not indexed)
    rows, scanned, lowest, newest = JobStore(sync_connection(conn)).list_jobs_page(
        before=before, budget=SCAN_BUDGET if filtered else limit + 1, limit=limit + 1,
        indexed_state=indexed, state=wanted, queue=queue, task=task, tag=tag,
        since=since)
    jobs = [_job(row) for row in rows]
    if len(jobs) > limit:
        jobs = jobs[:limit]
        next_cursor: str | None = _encode_cursor(jobs[-1].id)
    elif scanned >= SCAN_BUDGET and lowest is not None and not (since and newest is not None and newest < since):
        # The budget ran out before the index did: continue below the lowest job examined. With
        # `since`, a whole budget of older jobs means the rest is older still (ids follow time).
        next_cursor = _encode_cursor(int(lowest))
    else:
        next_cursor = None
    return Page(tuple(jobs), next_cursor, scanned)


def wait_for_job(conn: Any, job_id: int, timeout: float = 30.0, *, dsn: str | None = None,
                 poll_interval: float = 5.0) -> JobRecord:
    """Block until a job is finished (completed, failed or cancelled) and return it, result included.

    A job is finished when nothing more happens to it: a failed attempt that will be retried is
    not. The wait LISTENs on its own session (the ``pgqueue_done`` channel, which the statements
    that finish jobs notify while anyone waits: the session registers as a waiter with a shared
    advisory lock), so it wakes within the notification latency; it also re-reads the job every
    ``poll_interval`` seconds in case a notification is lost.

    The job must be committed: a job enqueued in a transaction that has not committed yet can
    never be claimed, so it can never finish. Commit first, then wait (waiting on the connection
    whose transaction enqueued it raises :class:`InvalidJobState` at once instead of hanging).

    An encrypted job's ``result`` is None here, with ``result_encrypted`` set: ``pgqueue.admin``
    never decrypts (it serves operators, who need no keys). ``App.result()`` waits the same way
    and decrypts with the app's keys.

    Args:
        conn: the caller's connection; the job is looked up on it first.
        timeout: seconds to wait at most.
        dsn: where the listening session connects (default: the same server, database and role
            as ``conn``).

    Raises:
        JobNotFound: no job has that id, or it was deleted while waiting.
        InvalidJobState: the job is not committed yet.
        JobWaitTimeout: still not finished after ``timeout`` seconds (also a ``TimeoutError``).

    Example:
        >>> job_id = app.enqueue(conn, "render-report", {"report_id": 7}); conn.commit()
        >>> admin.wait_for_job(conn, job_id, timeout=60).result
        {'pages': 12}
    """
    own = sync_connection(conn)
    job = get_job(own, job_id)
    if job.finished:
        return job
    deadline = time.monotonic() + max(float(timeout), 0.0)
    with done_listener(dsn or listener_dsn(own)) as listener:
        if not listener.join(deadline - time.monotonic()):
            raise JobWaitTimeout(f"job {job_id} is still {job.state} after {float(timeout):g}s")
        while True:
            # Read on the listening session (after LISTEN): it sees every commit, whatever
            # isolation level or snapshot the caller's transaction holds.
            row = JobStore(listener.conn).get_job(job_id)
            if row is None:
                if JobStore(own).get_job(job_id) is not None:
                    raise InvalidJobState(f"job {job_id} is not committed: it was enqueued in a transaction that "
                                          "has not committed yet, so no worker can see it; commit, then wait")
                raise JobNotFound(f"job {job_id} was deleted while waiting for it")
            job = _job(row)
            if job.finished:
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobWaitTimeout(f"job {job_id} is still {job.state} after {float(timeout):g}s")
            listener.wait(min(remaining, poll_interval))


async def wait_for_job_async(conn: Any, job_id: int,
                             timeout: float = 30.0,  # noqa: ASYNC109 - the same signature as wait_for_job
                             *, dsn: str | None = None, poll_interval: float = 5.0) -> JobRecord:
    """:func:`wait_for_job` for asyncio code: the same wait, without blocking the event loop.

    Args:
        conn: a psycopg ``AsyncConnection`` or a SQLAlchemy ``AsyncSession``/``AsyncConnection``
            (psycopg driver); the job is looked up on it first.
        timeout, dsn, poll_interval: as for :func:`wait_for_job` (the listening session is an
            ``AsyncConnection`` of its own).

    Raises:
        As :func:`wait_for_job`.

    Example:
        >>> job_id = await app.enqueue_async(conn, "render-report", {"report_id": 7}); await conn.commit()
        >>> (await admin.wait_for_job_async(conn, job_id, timeout=60)).result
        {'pages': 12}
    """
    own = await async_connection(conn)
    row = await AsyncJobStore(own).get_job(_check_job_id(job_id))
    if row is None:
        raise JobNotFound(f"job {job_id} not found")
    job = _job(row)
    if job.finished:
        return job
    deadline = time.monotonic() + max(float(timeout), 0.0)
    async with async_done_listener(dsn or listener_dsn(own)) as listener:
        if not await listener.join(deadline - time.monotonic()):
            raise JobWaitTimeout(f"job {job_id} is still {job.state} after {float(timeout):g}s")
        while True:
            # Read after LISTEN, on the listening session (see wait_for_job): no wake-up is lost.
            row = await AsyncJobStore(listener.conn).get_job(job_id)
            if row is None:
                if await AsyncJobStore(own).get_job(job_id) is not None:
                    raise InvalidJobState(f"job {job_id} is not committed: it was enqueued in a transaction that "
                                          "has not committed yet, so no worker can see it; commit, then wait")
                raise JobNotFound(f"job {job_id} was deleted while waiting for it")
            job = _job(row)
            if job.finished:
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobWaitTimeout(f"job {job_id} is still {job.state} after {float(timeout):g}s")
            await listener.wait(min(remaining, poll_interval))


def retry_job(conn: Any, job_id: int, *, actor: str | None = None, source: str = DEFAULT_SOURCE) -> JobChange:
    """Make a failed or cancelled job available again now. A job that used all its attempts gets one
    more, so a manual retry always runs.

    Raises:
        JobNotFound: no job has that id.
        InvalidJobState: the job is not failed or cancelled, or its ``unique_key`` is held by a live
            job again (a new job took the key once this one was dead), or it was cancelled because a
            dependency failed and that dependency is still failed, cancelled or deleted (it would
            wait for ever: retry the dependency, which brings this job back, or the workflow).

    Example:
        >>> admin.retry_job(conn, 42, actor="alice")
        JobChange(id=42, previous_state='failed', state='available')
    """
    where = _source(source)
    own = sync_connection(conn)
    previous = JobStore(own).job_state(_check_job_id(job_id))
    if previous is None:
        raise JobNotFound(f"job {job_id} not found")
    dead = WorkflowStore(own).dead_dependency(job_id) if previous == JobState.CANCELLED else None
    if dead is not None:
        dependency, dependency_state = dead
        how = (f"is {dependency_state}: retry job {dependency} (that brings job {job_id} back) or its workflow"
               if dependency_state else "was deleted, so it can never run: enqueue it again")
        raise InvalidJobState(f"job {job_id} waits for job {dependency}, which {how}")
    if JobStore(own).retry_jobs([job_id], None, only_failed=False, actor=_actor(actor), source=where).retried:
        # 'waiting' for a job whose dependencies have not all completed (see pgqueue.workflows).
        return JobChange(job_id, previous, JobStore(own).job_state(job_id) or JobState.AVAILABLE.value)
    state = JobStore(own).job_state(job_id)
    if state is None:
        raise JobNotFound(f"job {job_id} not found")
    key = get_job(own, job_id).unique_key if state in (JobState.FAILED, JobState.CANCELLED) else None
    holder = JobStore(own).live_job_with_unique_key(key) if key is not None else None
    if holder is not None:
        raise InvalidJobState(f"job {job_id} cannot be retried: its unique_key {key!r} is held by live job {holder} "
                              "(a retry would make a second live job with that key); retry it once that one is done")
    raise InvalidJobState(f"job {job_id} is {state}; only failed or cancelled jobs can be retried")


def retry_failed(conn: Any, *, queue: str | None = None, actor: str | None = None,
                 source: str = DEFAULT_SOURCE) -> RetriedJobs:
    """Retry every failed job (the dead-letter set), or only one queue's; returns their ids.

    A failed job whose ``unique_key`` a live job holds again stays failed, and of several failed
    jobs sharing a key only the newest is retried: a key has one live job at most. Those left
    failed are reported in the result's ``skipped``.

    Returns:
        The retried ids in id order: a :class:`RetriedJobs`, which is a ``list`` of them with the
        skipped ids in ``.skipped``.

    Example:
        >>> retried = admin.retry_failed(conn, queue="emails")
        >>> retried, retried.skipped
        ([17, 23], [12])
    """
    where = _source(source)
    if queue is not None:
        check_queue_name(queue)
    done = JobStore(sync_connection(conn)).retry_jobs(None, queue, only_failed=True, actor=_actor(actor), source=where)
    return RetriedJobs(done.retried, done.skipped)


def cancel_job(conn: Any, job_id: int, *, actor: str | None = None, source: str = DEFAULT_SOURCE) -> JobChange:
    """Cancel a waiting, scheduled, available or running job (its dependents follow their
    ``on_dependency_failure`` policy).

    A running job's worker is told at once (NOTIFY, and its heartbeat checks every half second when
    LISTEN is unavailable): ``job.cancelled`` becomes True, ``job.raise_if_cancelled()`` raises
    :class:`pgqueue.Cancelled`, and an async handler's coroutine is cancelled. Whatever the attempt
    then produces is refused (the job stays ``cancelled``) and a transactional task's writes roll
    back. A sync handler that never checks runs to its end, but its outcome is refused all the same.

    Raises:
        JobNotFound: no job has that id.
        InvalidJobState: the job is already finished.

    Example:
        >>> admin.cancel_job(conn, 42).previous_state
        'scheduled'
    """
    where = _source(source)
    previous, cancelled = JobStore(sync_connection(conn)).cancel_job(_check_job_id(job_id), _actor(actor), where)
    if previous is None:
        raise JobNotFound(f"job {job_id} not found")
    if not cancelled:
        live = ", ".join(str(s) for s in CANCELLABLE_STATES[:-1]) + f" or {CANCELLABLE_STATES[-1]}"
        raise InvalidJobState(f"job {job_id} is {previous}; only {live} jobs can be cancelled")
    return JobChange(job_id, previous, JobState.CANCELLED.value)


def delete_job(conn: Any, job_id: int, *, actor: str | None = None, source: str = DEFAULT_SOURCE) -> JobChange:
    """Delete a job that is not running; its audit trail stays, with a ``deleted`` event.

    Raises:
        JobNotFound: no job has that id.
        InvalidJobState: the job is running (cancel it first).
    """
    where = _source(source)
    own = sync_connection(conn)
    previous = JobStore(own).job_state(_check_job_id(job_id))
    if previous is None:
        raise JobNotFound(f"job {job_id} not found")
    if JobStore(own).delete_job(job_id, _actor(actor), where):
        return JobChange(job_id, previous, None)
    state = JobStore(own).job_state(job_id)
    if state is None:
        raise JobNotFound(f"job {job_id} not found")
    raise InvalidJobState(f"job {job_id} is {state}; a running job cannot be deleted: cancel it first")


# --- queues -----------------------------------------------------------------------------------

#: Jobs that :func:`purge_queue` may delete: every state but running (their workers hold them).
PURGEABLE_STATES = tuple(str(s) for s in JobState if s is not JobState.RUNNING)


def report(conn: Any, name: Literal["queue_lag", "throughput", "failure_rate", "run_times", "dead_letters"], *,
           window: str | None = None, bucket: str | None = None) -> list[dict[str, Any]]:
    """Run one of the ready reports of ``sql/reports/`` (the same files) and return its rows.

    Args:
        name: ``queue_lag``, ``throughput``, ``failure_rate``, ``run_times`` or ``dead_letters``.
        window, bucket: PostgreSQL intervals (``'1 hour'``, ``'5 minutes'``) for the reports that
            take them (their defaults are in the files).

    Example:
        >>> admin.report(conn, "throughput", window="1 hour", bucket="5 minutes")
        [{'queue': 'emails', 'bucket_start': datetime(...), 'completed': 120, 'failed': 2, ...}]
    """
    query = getattr(REPORTS, f"report_{name}", None)
    if query is None:
        raise InvalidFilter(f"report {name!r} does not exist; reports: "
                            f"{', '.join(f.removeprefix('report_') for f in REPORTS._fields)}")
    settings = {key: value for key, value in (("pgqueue.report_window", window), ("pgqueue.report_bucket", bucket))
                if value is not None}
    return run_report(sync_connection(conn), query, settings)


def list_queues(conn: Any) -> list[QueueInfo]:
    """Every queue with live or dead-letter jobs, a settings row, or jobs finished in the last hour:
    paused, limits, counts, lag, and the last hour's outcomes. (A queue whose jobs all completed
    over an hour ago is not listed: finding it would mean reading every job.)

    Counts cover the live states and the dead-letter set (failed, cancelled), read through their
    partial indexes; completed jobs are counted over the last hour. Two statements: the
    ``queue_lag`` and ``throughput`` reports.

    Example:
        >>> [(q.name, q.available, q.lag_seconds) for q in admin.list_queues(conn)]
        [('emails', 12, 0.4)]
    """
    own = sync_connection(conn)
    recent: dict[str, tuple[int, int]] = {}
    for row in report(own, "throughput", window="1 hour", bucket="1 hour"):
        completed, failed = recent.get(row["queue"], (0, 0))
        recent[row["queue"]] = (completed + int(row["completed"]), failed + int(row["failed"]))
    starts = QueueStore(own).rate_window_starts()
    queues = {row["queue"]: replace(_queue(row, recent), starts_in_window=starts.get(row["queue"]))
              for row in report(own, "queue_lag")}
    for name in recent.keys() - queues.keys():  # only finished jobs, in the last hour
        queues[name] = _queue({"queue": name, "paused": False, "concurrency": None, "rate_limit": None,
                               "rate_period_seconds": None, "scheduled": 0, "available": 0, "running": 0,
                               "failed": 0, "cancelled": 0, "lag_seconds": None}, recent)
    return [queues[name] for name in sorted(queues)]


def list_task_limits(conn: Any) -> list[TaskLimitsInfo]:
    """Tasks with limits (stored by workers at start from ``@app.task``), and their usage now.

    Example:
        >>> [(t.task, t.concurrency, t.running) for t in admin.list_task_limits(conn)]
        [('sync-record', 3, 1)]
    """
    return [TaskLimitsInfo(
        task=row["task"], concurrency=row["concurrency"], rate_limit=row["rate_limit"],
        rate_period_seconds=row["rate_period_seconds"], group_concurrency=row["group_concurrency"],
        running=int(row["running"]),
        starts_in_window=None if row["starts_in_window"] is None else int(row["starts_in_window"]),
        updated_at=row["updated_at"]) for row in QueueStore(sync_connection(conn)).task_limits()]


def _queue_info(conn: Any, queue: str) -> QueueInfo:
    for info in list_queues(conn):
        if info.name == queue:
            return info
    raise QueueNotFound(f"queue {queue!r} not found")


def pause_queue(conn: Any, queue: str, *, actor: str | None = None, create: bool = False,
                source: str = DEFAULT_SOURCE) -> QueueInfo:
    """Pause a queue: workers stop claiming its jobs (enqueueing still works; running jobs finish).

    Raises:
        QueueNotFound: no job and no settings row has that queue name, and ``create`` is False.
        InvalidQueueName: the name breaks the queue-name rule.

    Example:
        >>> admin.pause_queue(conn, "emails", actor="alice").paused
        True
    """
    return _set_paused(conn, queue, True, actor, create, source)


def resume_queue(conn: Any, queue: str, *, actor: str | None = None, create: bool = False,
                 source: str = DEFAULT_SOURCE) -> QueueInfo:
    """Resume a paused queue and wake idle workers (on commit). Raises as :func:`pause_queue`."""
    return _set_paused(conn, queue, False, actor, create, source)


def _set_paused(conn: Any, queue: str, paused: bool, actor: str | None, create: bool, source: str) -> QueueInfo:
    where = _source(source)
    own = sync_connection(conn)
    _require_queue(own, queue, create)
    QueueStore(own).set_queue_paused(queue, paused, _actor(actor), where)
    return _queue_info(own, queue)


def purge_queue(conn: Any, queue: str, *, state: str | None = None, actor: str | None = None,
                source: str = DEFAULT_SOURCE) -> int:
    """Delete a queue's jobs: all but running ones, or only those in ``state``; returns how many.

    Each deleted job leaves a ``purged`` event in its audit trail.

    Raises:
        QueueNotFound: the queue does not exist.
        InvalidJobState: ``state`` is running (their workers hold them: cancel them first).
        InvalidFilter: ``state`` is not a job state.

    Example:
        >>> admin.purge_queue(conn, "emails", state="failed")
        12
    """
    if state is not None and str(state).strip().lower() == JobState.RUNNING:
        raise InvalidJobState("running jobs cannot be purged: their workers hold them; cancel them first")
    wanted = _check_state(state, PURGEABLE_STATES)
    where = _source(source)
    own = sync_connection(conn)
    _require_queue(own, queue, create=False, creatable=False)
    return JobStore(own).purge_queue(queue, wanted, _actor(actor), where)


def set_queue_limits(conn: Any, queue: str, *, concurrency: int | _Unchanged | None = UNCHANGED,
                     rate: str | _Unchanged | None = UNCHANGED, actor: str | None = None,
                     create: bool = False, source: str = DEFAULT_SOURCE) -> QueueInfo:
    """Store a queue's global limits: at most ``concurrency`` running jobs, at most ``rate`` starts.

    The limits live in ``pgqueue.queues`` (``concurrency``, ``rate_limit``, ``rate_period_seconds``)
    and hold across every worker from its next claim (the change is announced on ``pgqueue_limits``;
    a worker without LISTEN sees it within about two seconds): the claim counts the queue's running jobs
    and its starts in the sliding window (database clock) under a lock. ``None`` removes a limit;
    a limit not passed keeps its value.

    Args:
        concurrency: a whole number >= 1, or None.
        rate: ``N/s``, ``N/m``, ``N/h`` or ``N/<duration>`` (``100/30s``), or None.
        create: configure a queue that has no job and no settings yet (else that is a typo and
            raises :class:`QueueNotFound`).

    Raises:
        InvalidQueueLimits: a malformed limit, or none given; nothing is changed.
        QueueNotFound: unknown queue and ``create`` is False; nothing is changed.

    Example:
        >>> admin.set_queue_limits(conn, "sms", concurrency=5, rate="20/s").rate
        '20/s'
    """
    if concurrency is UNCHANGED and rate is UNCHANGED:
        raise InvalidQueueLimits("give concurrency, rate or both (None removes a limit)")
    new_concurrency = None if concurrency is UNCHANGED else _check_concurrency(concurrency)
    new_rate = None if rate is UNCHANGED or rate is None else parse_rate(rate)
    where = _source(source)
    own = sync_connection(conn)
    _require_queue(own, queue, create)
    QueueStore(own).set_limits(queue, concurrency=new_concurrency, set_concurrency=concurrency is not UNCHANGED,
                                rate=new_rate, set_rate=rate is not UNCHANGED, actor=_actor(actor), source=where)
    return _queue_info(own, queue)


# --- workers, schedules, server ----------------------------------------------------------------


def list_workers(conn: Any) -> list[WorkerInfo]:
    """Registered worker processes, oldest first, with their last heartbeat.

    Example:
        >>> sum(w.alive for w in admin.list_workers(conn))
        3
    """
    rows = WorkerStore(sync_connection(conn)).list_workers()
    return [WorkerInfo(**(row | {"queues": tuple(row["queues"] or ())})) for row in rows]


def list_schedules(conn: Any) -> list[ScheduleInfo]:
    """Cron schedules by name, each with its next fire time (from :func:`pgqueue.schedules.list_schedules`).

    Example:
        >>> [(s.name, s.next_run_at) for s in admin.list_schedules(conn)]
        [('daily-report', datetime(2030, 1, 2, 14, 0, tzinfo=...))]
    """
    from pgqueue import schedules

    result = []
    for item in schedules.list_schedules(conn):
        disabled = getattr(item, "disabled_at", None) is not None
        state = "disabled" if disabled else "paused" if item.paused else "active"
        result.append(ScheduleInfo(name=item.name, cron=item.cron, timezone=item.timezone, task=item.task,
                                   queue=item.queue, paused=item.paused, state=state, next_run_at=item.next_run_at,
                                   last_run_at=item.last_run_at))
    return result


def list_breakers(conn: Any) -> list[BreakerInfo]:
    """Every task's circuit breaker, by task name.

    Example:
        >>> [(b.task, b.state) for b in admin.list_breakers(conn)]
        [('send-sms', 'open')]
    """
    rows = BreakerStore(sync_connection(conn)).list_breakers()
    return [BreakerInfo(**{name: row[name] for name in BreakerInfo.__dataclass_fields__}) for row in rows]


def reset_breaker(conn: Any, task: str, *, actor: str | None = None, source: str = DEFAULT_SOURCE) -> BreakerChange:
    """Close ``task``'s circuit breaker now, forgetting its counted failures (audited with ``actor``
    and ``source``).

    Its held jobs are claimed again at the workers' next poll. Resetting a closed breaker is
    allowed (it clears the failures counted so far).

    Raises:
        BreakerNotFound: no breaker is declared for ``task`` (no worker with it ever started).

    Example:
        >>> admin.reset_breaker(conn, "send-sms", actor="alice").previous_state
        'open'
    """
    checked = _check_text(task, "task", _MAX_TASK_LENGTH)
    if not checked:
        raise BreakerNotFound("a task name is required")
    where = _source(source)
    previous = BreakerStore(sync_connection(conn)).reset_breaker(checked, _actor(actor), where)
    if previous is None:
        raise BreakerNotFound(f"no circuit breaker for task {task!r} (`pgqueue breakers list` shows them)")
    return BreakerChange(checked, previous, "closed")


@dataclass(frozen=True)
class BreakerChange:
    """What :func:`reset_breaker` did."""

    task: str
    previous_state: str
    state: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def notification_queue_usage(conn: Any) -> float:
    """``pg_notification_queue_usage()``: how full the server's NOTIFY queue is (0 to 1).

    NOTIFY is transactional: PostgreSQL keeps committed notifications until every listening
    session has read them. If the queue fills (a LISTENing session stuck in a long transaction),
    every commit that enqueues a job fails, taking the application's own writes with it.
    """
    return ServerStore(sync_connection(conn)).notification_queue_usage()


# --- health -----------------------------------------------------------------------------------

NOTIFICATION_LIMIT = 0.5


def _backlog_check(conn: Any, max_age: float) -> HealthCheck:
    workers = [w for w in list_workers(conn) if w.alive]
    oldest: float | None = None
    stranded: list[str] = []
    paused: list[str] = []
    for queue in list_queues(conn):
        age = queue.lag_seconds
        if age is None:
            continue
        if queue.paused:  # its backlog waits on purpose
            paused.append(repr(queue.name))
            continue
        oldest = age if oldest is None else max(oldest, age)
        served = any(not w.queues or queue.name in w.queues for w in workers)
        if age > max_age and not served:
            stranded.append(f"{queue.name!r} (oldest waiting {format_seconds(age)})")
    if stranded:
        return HealthCheck("workers", "fail", f"jobs available for over {format_seconds(max_age)} and no live worker "
                                              f"serves their queue: {', '.join(stranded)}")
    waiting = "no job available" if oldest is None else f"oldest available job waiting {format_seconds(oldest)}"
    if paused:
        waiting += f" (paused queues not counted: {', '.join(paused)})"
    return HealthCheck("workers", "ok", f"{len(workers)} live worker{'' if len(workers) == 1 else 's'}; {waiting}")


def _notification_check(usage: float) -> HealthCheck:
    detail = f"{usage:.1%} used (limit {NOTIFICATION_LIMIT:.0%})"
    if usage >= NOTIFICATION_LIMIT:
        return HealthCheck("notification_queue", "fail", f"{detail}: a LISTENing session may be stuck in a long "
                                                         "transaction; when it is full, every commit that enqueues "
                                                         "fails")
    return HealthCheck("notification_queue", "ok", detail)


def _long_transaction_check(store: ServerStore, max_xact_age: float) -> HealthCheck:
    # A warning, not a failure: pgqueue still works (jobs are claimed and completed), but vacuum
    # cannot remove the dead rows every job leaves behind while the transaction is open, so the
    # jobs table and its indexes bloat and claims slow down the longer it stays. The cure is
    # outside pgqueue (end that session), and restarting workers, which a probe would do, won't help.
    found = store.long_transactions(max_xact_age)
    if not found:
        return HealthCheck("long_transactions", "ok",
                           f"no transaction open longer than {format_seconds(max_xact_age)}")
    listed = "; ".join(
        f"pid {row['pid']} open for {format_seconds(row['age_seconds'])} (user {row['user']!r}, application "
        f"{row['application_name']!r}, {row['state']})" for row in found)
    return HealthCheck("long_transactions", "warn",
                       f"{len(found)} transaction{'' if len(found) == 1 else 's'} open longer than "
                       f"{format_seconds(max_xact_age)}: {listed}; while open, vacuum cannot clean pgqueue.jobs and "
                       "the queue slows as it bloats (end them with pg_terminate_backend(pid))")


def _breaker_check(conn: Any) -> HealthCheck:
    # A warning, not a failure: an open breaker is pgqueue doing its job around a failing
    # downstream, and restarting workers (what a failed probe leads to) would not help.
    held = [b for b in list_breakers(conn) if b.state != "closed"]
    if not held:
        return HealthCheck("circuit_breakers", "ok", "no circuit breaker open")
    listed = ", ".join(
        f"{b.task!r} ({b.state.replace('_', '-')}, {b.failures} failures in {format_seconds(b.window_seconds)})"
        for b in held)
    return HealthCheck("circuit_breakers", "warn",
                       f"{len(held)} circuit breaker{'' if len(held) == 1 else 's'} holding jobs back: {listed} "
                       "(`pgqueue breakers reset TASK` closes one)")


def _schema_check(dsn: str) -> HealthCheck:
    from pgqueue import _migrate  # alembic and SQLAlchemy: only loaded for this check

    try:
        pending = _migrate.check(dsn)
    except PgqueueError as exc:
        return HealthCheck("schema", "fail", str(exc))
    if pending:
        return HealthCheck("schema", "fail", f"pending migrations: {' '.join(pending)} (run `pgqueue migrate`)")
    return HealthCheck("schema", "ok", "at head, no pending migrations")


def health(dsn: str, *, max_age: float = 300.0, max_xact_age: float = 300.0,
           shown_dsn: Callable[[str], str] = redact_dsn) -> HealthReport:
    """Check that pgqueue is healthy on the database at ``dsn`` (its own sessions: unlike the other
    functions it must report an unreachable database, so it takes an address, not a connection).

    Checks: the database is reachable and takes writes; the schema is at the newest migration;
    every queue with a job available for over ``max_age`` seconds has a live worker serving it
    (paused queues excepted); the server's NOTIFY queue is under half full. Warns (``warn``, still
    healthy) about transactions open for over ``max_xact_age`` seconds: they keep vacuum from
    cleaning finished jobs, and about circuit breakers that are open or half-open.

    Example:
        >>> report = admin.health(dsn)
        >>> report.healthy, [c.name for c in report.checks if c.status != "ok"]
        (True, [])
    """
    try:
        conn = connect(dsn)
    except PgqueueError as exc:
        skipped = [HealthCheck(name, "skipped", "database unreachable")
                   for name in ("schema", "workers", "notification_queue", "long_transactions", "circuit_breakers")]
        # The error names the database as redact_dsn does, and the driver's reason names its host
        # and port: both only when shown_dsn shows the address too (the dashboard shows neither).
        shown = shown_dsn(dsn)
        detail = str(exc) if shown == redact_dsn(dsn) else f"cannot connect to {shown}"
        return HealthReport((HealthCheck("database", "fail", detail), *skipped))
    with conn:
        store = ServerStore(conn)
        read_only = store.read_only_reason()
        if read_only:
            database = HealthCheck("database", "fail", f"{shown_dsn(dsn)} is read-only ({read_only}): workers can "
                                                       "neither claim nor finish jobs, and every enqueue fails")
        else:
            database = HealthCheck("database", "ok", f"reachable at {shown_dsn(dsn)}")
        checks = [database, _schema_check(dsn)]
        try:
            checks.append(_backlog_check(conn, max_age))
        except SchemaNotReady:
            conn.rollback()
            checks.append(HealthCheck("workers", "skipped", "the pgqueue schema is missing"))
        checks.append(_notification_check(store.notification_queue_usage()))
        checks.append(_long_transaction_check(store, max_xact_age))
        try:
            checks.append(_breaker_check(conn))
        except SchemaNotReady:
            conn.rollback()
            checks.append(HealthCheck("circuit_breakers", "skipped",
                                      "no pgqueue.circuit_breakers table (run `pgqueue migrate`)"))
    return HealthReport(tuple(checks))


# --- retention ---------------------------------------------------------------------------------

#: What :func:`prune` returns: rows deleted (or counted, for a dry run) per kind, and the cutoffs.
PruneReport = _retention.PruneReport

_Age = str | float | None


def _age(value: _Age | _Unchanged, name: str, default: float | None) -> float | None:
    if value is UNCHANGED:
        return default
    if value is None or isinstance(value, str):
        return parse_duration(value, name) if value is not None else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_DURATION_SECONDS:
        raise ConfigurationError(f"{name} {value!r} must be seconds (from 0 to 100 years), a duration such as "
                                 "'12h', or None")
    return float(value)


def prune(dsn: str, *, completed_older_than: _Age | _Unchanged = UNCHANGED,
          failed_older_than: _Age | _Unchanged = UNCHANGED, audit_older_than: _Age | _Unchanged = UNCHANGED,
          dry_run: bool = False, actor: str | None = None, source: str = DEFAULT_SOURCE,
          progress: Callable[[str, int], None] | None = None, batch_size: int = _retention.BATCH_SIZE) -> PruneReport:
    """Delete finished jobs (and spent cron run records, and sealed audit rows) older than the
    retention, now: what the workers' maintenance leader does every ``PGQUEUE_PRUNE_INTERVAL_SECONDS``.

    Like :func:`health` it takes an address, not a connection: it deletes in batches of
    ``batch_size`` rows (5,000), each its own short transaction on a session of its own (one huge
    transaction would hold row locks and a burst of WAL), and each batch writes a ``pruned`` row in
    ``pgqueue.job_events`` in its transaction, with its counts, the run's cutoffs, ``actor`` and
    ``source``: a run stopped half way has audited every row it deleted. Returns the run's totals.

    Args:
        completed_older_than: completed jobs finished longer ago than this: seconds, a duration
            (``"12h"``, ``"1d"``), or None / ``"never"`` to keep them. Default: the
            ``PGQUEUE_RETAIN_COMPLETED`` setting (1 day).
        failed_older_than: the same for failed and cancelled jobs (``PGQUEUE_RETAIN_FAILED``, 7 days).
        audit_older_than: audit retention (``PGQUEUE_RETAIN_AUDIT``, 30 days): whole sealed ranges
            of ``pgqueue.job_events``, and cron run records no schedule can fire again.
        dry_run: count what would be deleted, delete and record nothing.
        progress: called after each batch with the step's name and the rows deleted so far.
        batch_size: rows deleted per transaction, 1 to 100,000.

    Raises:
        ConfigurationError: a malformed age, source or batch size; nothing is deleted.

    Example:
        >>> admin.prune(dsn, completed_older_than="1h", failed_older_than="never").completed
        1200
    """
    settings = Settings.from_env()
    policy = _retention.RetentionPolicy(
        completed=_age(completed_older_than, "completed_older_than", settings.retain_completed),
        failed=_age(failed_older_than, "failed_older_than", settings.retain_failed),
        audit=_age(audit_older_than, "audit_older_than", settings.retain_audit))
    where = _source(source)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) \
            or not 1 <= batch_size <= _retention.MAX_BATCH_SIZE:
        raise ConfigurationError(f"batch_size must be an integer between 1 and {_retention.MAX_BATCH_SIZE}, "
                                 f"not {batch_size!r}")
    with translate_errors(), connect(dsn, autocommit=True) as conn:
        if dry_run:
            return _retention.count_prunable(conn, policy)
        return _retention.prune(conn, policy, _actor(actor), progress, batch_size=batch_size, source=where)


# --- workflows (chains, groups, depends_on; see pgqueue.workflows) ---


@dataclass(frozen=True)
class WorkflowJob:
    """One job of a workflow, with the ids of the jobs it depends on."""

    id: int
    task: str
    queue: str
    state: str
    attempt: int
    max_attempts: int
    pending_dependencies: int
    on_dependency_failure: str | None
    depends_on: list[int]
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error_type: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WorkflowInfo:
    """A workflow: its jobs in enqueue order, and counts per state.

    ``state`` sums it up: ``completed`` when every job completed, ``failed`` when nothing is left
    to run and some job failed or was cancelled, else ``running``.
    """

    id: str
    jobs: list[WorkflowJob]

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for job in self.jobs:
            counts[job.state] = counts.get(job.state, 0) + 1
        return counts

    @property
    def state(self) -> str:
        return _workflow_state({job.state for job in self.jobs})

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "counts": self.counts,
                "jobs": [job.as_dict() for job in self.jobs]}


@dataclass(frozen=True)
class WorkflowHead:
    """The head of a workflow, for a view that polls it (:func:`get_workflow_head`): its first
    jobs in enqueue order (and one wanted job wherever it is), with counts per state for all of them.
    """

    id: str
    jobs: list[WorkflowJob]
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def hidden(self) -> int:
        """How many jobs of the workflow :attr:`jobs` leaves out."""
        return max(self.total - len(self.jobs), 0)

    @property
    def state(self) -> str:
        """As :attr:`WorkflowInfo.state`."""
        return _workflow_state({state for state, n in self.counts.items() if n})


def _workflow_state(states: set[str]) -> str:
    if states == {"completed"}:
        return "completed"
    if states <= set(FINISHED_STATES):
        return "failed"
    return "running"


def _check_workflow_id(workflow_id: Any) -> str:
    try:
        return str(uuid.UUID(str(workflow_id)))
    except ValueError:
        raise WorkflowNotFound(f"workflow id {workflow_id!r} is not a UUID (pgqueue workflows show <uuid>)") from None


def get_workflow(conn: Any, workflow_id: str | int) -> WorkflowInfo:
    """A workflow's jobs and their states; a job id is accepted too (its workflow is shown).

    Raises:
        WorkflowNotFound: no job carries that workflow id (or that job belongs to no workflow).

    Example:
        >>> admin.get_workflow(conn, wf.id).state
        'running'
    """
    store = WorkflowStore(sync_connection(conn))
    wanted = _resolve_workflow(store, workflow_id)
    rows = store.jobs(wanted)
    if not rows:
        raise WorkflowNotFound(f"workflow {wanted} not found (no job carries it; its jobs may have been pruned)")
    return WorkflowInfo(wanted, [WorkflowJob(**{**row, "depends_on": list(row["depends_on"])}) for row in rows])


def _resolve_workflow(store: WorkflowStore, workflow_id: str | int) -> str:
    """The workflow id ``workflow_id`` names: itself, or the workflow of the job it is the id of."""
    job_id = workflow_id if isinstance(workflow_id, int) else whole_number(str(workflow_id))
    if job_id is not None:
        found = store.workflow_of(job_id)
        if found is None:
            raise WorkflowNotFound(f"job {workflow_id} belongs to no workflow (or does not exist)")
        workflow_id = found
    return _check_workflow_id(workflow_id)


def get_workflow_head(conn: Any, workflow_id: str | int, *, limit: int = 50,
                      include: int | None = None) -> WorkflowHead:
    """The first ``limit`` jobs of a workflow (and job ``include`` wherever it is), with counts per
    state of all its jobs, computed in the database: for a view that polls a workflow of any size
    (the dashboard's job page). A job id is accepted as ``workflow_id`` too, as for :func:`get_workflow`.

    Raises:
        WorkflowNotFound: no job carries that workflow id (or that job belongs to no workflow).

    Example:
        >>> head = admin.get_workflow_head(conn, wf.id, limit=50)
        >>> len(head.jobs), head.counts
        (50, {'available': 5000, 'waiting': 1})
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidFilter(f"limit {limit!r} must be between 1 and {MAX_PAGE_SIZE}")
    store = WorkflowStore(sync_connection(conn))
    wanted = _resolve_workflow(store, workflow_id)
    counts = store.counts(wanted)
    if not counts:
        raise WorkflowNotFound(f"workflow {wanted} not found (no job carries it; its jobs may have been pruned)")
    rows = store.head(wanted, limit, include)
    return WorkflowHead(wanted, [WorkflowJob(**{**row, "depends_on": list(row["depends_on"])}) for row in rows],
                        counts)


def cancel_workflow(conn: Any, workflow_id: str | int, *, actor: str | None = None,
                    source: str = DEFAULT_SOURCE) -> list[int]:
    """Cancel every unfinished job of a workflow (waiting, scheduled, available, running); returns
    their ids. Completed jobs stay completed.

    Raises:
        WorkflowNotFound: no job carries that workflow id.
    """
    info = get_workflow(conn, workflow_id)
    return WorkflowStore(sync_connection(conn)).cancel(info.id, _actor(actor), _source(source))


def retry_workflow(conn: Any, workflow_id: str | int, *, actor: str | None = None,
                   source: str = DEFAULT_SOURCE) -> list[int]:
    """Retry every failed or cancelled job of a workflow in one statement; returns their ids. Jobs
    whose dependencies have not all completed wait again; the others become available.

    A retry that would leave a job waiting for ever is refused and changes nothing: a job that
    still waits for a dependency that was deleted (or pruned) can never run again, and one that
    waits for a failed or cancelled job of another workflow would run only once that job is retried.

    Raises:
        WorkflowNotFound: no job carries that workflow id.
        InvalidJobState: a job of the workflow waits for a deleted dependency, or for a failed or
            cancelled job of another workflow (the message names it, and the way out).

    Example:
        >>> admin.retry_workflow(conn, wf.id, actor="alice")
        [41, 42, 43]
    """
    info = get_workflow(conn, workflow_id)
    store = WorkflowStore(sync_connection(conn))
    stranded = store.stranded_jobs(info.id)
    if stranded:
        job_id, task, dependency, dependency_state = stranded[0]
        others = len({row[0] for row in stranded}) - 1
        more = f" (and {others} more job{'' if others == 1 else 's'} of it)" if others else ""
        if dependency_state is None:
            why = (f"job {job_id} ({task}){more} waits for job {dependency}, which was deleted, so it could never "
                   "run again; enqueue the steps that depend on it as a new workflow, or delete this one's jobs")
        else:
            why = (f"job {job_id} ({task}){more} waits for job {dependency} of another workflow, which is "
                   f"{dependency_state}: retry job {dependency} first (that brings job {job_id} back)")
        raise InvalidJobState(f"workflow {info.id} was not retried: {why}")
    return store.retry(info.id, _actor(actor), _source(source))
