"""What a handler sees (:class:`Job`), what it can raise (:class:`Retry`, :class:`Discard`,
:class:`Snooze`, :class:`Cancelled`), and the job states of the contract (:class:`JobState`)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pgqueue.tasks import Priority


class JobState(enum.StrEnum):
    """The states a job moves through; the strings are what SQL, the CLI and the API show."""

    WAITING = "waiting"
    SCHEDULED = "scheduled"
    AVAILABLE = "available"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


LIVE_STATES = (JobState.SCHEDULED, JobState.AVAILABLE, JobState.RUNNING)
#: States an operator can cancel: the live ones and 'waiting' (on dependencies).
CANCELLABLE_STATES = (JobState.WAITING, *LIVE_STATES)
FINISHED_STATES = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobSpec:
    """One job for :meth:`pgqueue.App.enqueue_many`; ``None`` options take the task's defaults.

    Example:
        >>> JobSpec("send-email", {"to": "b@example.com"}, priority="high")
        JobSpec(task='send-email', args={'to': 'b@example.com'}, ...)
    """

    task: str
    args: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    priority: Priority | None = None
    delay: float | timedelta | None = None
    run_at: datetime | None = None
    max_attempts: int | None = None
    unique_key: str | None = None
    tags: Sequence[str] | None = None
    encrypt: bool | None = None
    group: str | None = None
    #: Jobs that must complete first: ids of existing jobs, or other specs of the same batch.
    depends_on: Sequence[int | JobSpec] = ()
    #: "cancel" (default) or "run": what this job does when a dependency fails for good.
    on_dependency_failure: str | None = None


class Retry(Exception):
    """Raise from a handler to retry the job after ``delay`` seconds (counts as an attempt).

    Example:
        >>> raise pgqueue.Retry(delay=60)   # the provider asked us to come back in a minute
    """

    def __init__(self, delay: float | timedelta = 0.0, reason: str | None = None) -> None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if not seconds >= 0:  # written so that NaN is refused too
            raise ValueError(f"Retry delay {seconds} must be >= 0")
        self.delay = seconds
        self.reason = reason
        super().__init__(reason or f"retry in {seconds:g}s")


class Discard(Exception):
    """Raise from a handler to fail the job at once, with no further attempts.

    Example:
        >>> raise pgqueue.Discard("recipient unsubscribed")
    """

    def __init__(self, reason: str = "discarded") -> None:
        self.reason = reason
        super().__init__(reason)


class Snooze(Exception):
    """Raise from a handler to run the job again after ``delay`` seconds without using an attempt.

    The job goes back to ``scheduled`` (``available`` for a zero delay) with its attempt count as it
    was before this attempt; the audit trail records a ``snoozed`` event.

    Example:
        >>> raise pgqueue.Snooze(delay=60)   # the record is locked elsewhere: look again in a minute
    """

    def __init__(self, delay: float | timedelta = 0.0) -> None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if not seconds >= 0:  # written so that NaN is refused too
            raise ValueError(f"Snooze delay {seconds} must be >= 0")
        self.delay = seconds
        super().__init__(f"snoozed for {seconds:g}s")


class Cancelled(Exception):
    """Raised by :meth:`Job.raise_if_cancelled` once an operator cancelled the running job.

    Let it propagate: the job is already ``cancelled`` in the database, the worker records nothing
    more, and a transactional task's writes roll back.
    """


def _is_utf8(text: str) -> bool:
    """False for a str holding a lone surrogate, which no UTF-8 database can store."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class Job:
    """The job a handler is running. Passed as the handler's first argument.

    Attributes:
        id: the job's id in ``pgqueue.jobs``.
        task, queue, args: what was enqueued.
        attempt: this attempt's number, starting at 1.
        max_attempts: attempts allowed before the job is ``failed``.
        enqueued_at: when the job was enqueued (database clock).
        encrypted: whether the job's args, result, error and progress note are stored only as ciphertext.
        connection: for ``transactional=True`` tasks, the psycopg connection whose transaction
            also marks the job completed; None otherwise.
    """

    id: int
    task: str
    queue: str
    args: dict[str, Any]
    attempt: int
    max_attempts: int
    enqueued_at: datetime
    priority: int = 100
    tags: tuple[str, ...] = ()
    lease_token: str = ""
    connection: Any = None
    _progress_sink: Callable[[Job, float, str | None], None] | None = field(default=None, repr=False)
    # The args' ciphertext as stored; the worker decrypts it into ``args`` before the handler runs.
    _sealed_args: bytes | None = field(default=None, repr=False)
    # Set by the worker's event loop when an operator cancels the job while it runs; read from any
    # thread (a bool is enough: nothing waits on it, and a threading.Event per job cost 3 us).
    _cancel_requested: bool = field(default=False, repr=False, compare=False)

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled while running (`pgqueue jobs cancel`, ``admin.cancel_job``).

        The worker learns it within a second. A sync handler should check it between steps of long
        work (an async handler's coroutine is cancelled for it).
        """
        return self._cancel_requested

    def raise_if_cancelled(self) -> None:
        """Raise :class:`Cancelled` if the job was cancelled while running.

        Example:
            >>> for row in rows:
            ...     job.raise_if_cancelled()
            ...     process(row)
        """
        if self._cancel_requested:
            raise Cancelled(f"job {self.id} was cancelled")

    _dependency_reader: Callable[[Job], dict[int, Any]] | None = field(default=None, repr=False)

    def dependency_results(self) -> dict[int, Any]:
        """The results of the jobs this one depends on, by job id in id order (the order a chain or
        group listed them); None for a dependency that did not complete (policy ``run``).

        Encrypted results are decrypted with the worker's keys. Reads the database on each call.

        Example:
            >>> @app.task
            ... def zip_exports(job: pgqueue.Job) -> None:
            ...     paths = [r["path"] for r in job.dependency_results().values()]
        """
        if self._dependency_reader is None:
            return {}
        return self._dependency_reader(self)

    @property
    def encrypted(self) -> bool:
        """True when the job's payloads are stored encrypted (its args were)."""
        return self._sealed_args is not None

    def set_progress(self, percent: float, note: str | None = None) -> None:
        """Record progress (0-100) and an optional note, visible to other processes within a second.

        The note of an encrypted job (``job.encrypted``, its task's ``encrypt=True``, or compliance
        mode) is stored only as ciphertext, as its result is: operators' views show that a note
        exists, never its text. The percentage stays readable.

        Raises:
            ValueError: ``percent`` is outside 0-100.
        """
        if not 0 <= percent <= 100:
            raise ValueError(f"progress {percent} must be between 0 and 100")
        # Checked here, in the handler: a note the database refuses would otherwise fail the
        # worker's progress flush or the job's completion, far from the call that caused it.
        if note is not None and (not isinstance(note, str) or "\x00" in note or not _is_utf8(note)):
            raise ValueError(f"progress note {note!a} must be a string without NUL characters "
                             "or lone surrogates")
        if self._progress_sink is not None:
            self._progress_sink(self, float(percent), note)
