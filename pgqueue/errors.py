"""Typed errors raised by pgqueue.

Every error a user can cause is a subclass of :class:`PgqueueError`, and its message names the bad
value and the rule it broke. The CLI catches ``PgqueueError`` once and prints one line.

::

    PgqueueError
    ├── ConfigurationError       InvalidDSN, EncryptionKeyMissing, EmbeddedServerError
    ├── DatabaseUnavailable
    ├── SchemaNotReady
    ├── EnqueueError             InvalidQueueName, InvalidPriority, ArgsNotSerializable,
    │                            PayloadTooLarge, UnknownTask, InvalidEnqueueOption,
    │                            InvalidArgs (also a TypeError), InvalidDependency, DependencyCycle
    ├── ScheduleError            InvalidCron, InvalidTimezone, InvalidSchedule, ScheduleExists,
    │                            ScheduleNotFound
    ├── JobNotFound
    ├── WorkflowNotFound
    ├── QueueNotFound
    ├── BreakerNotFound
    ├── InvalidJobState
    ├── InvalidQueueLimits
    ├── InvalidFilter
    ├── JobWaitTimeout           (also a TimeoutError)
    ├── JobUnsuccessful          JobFailed, JobCancelled (App.result: the job gave no result)
    └── DecryptionError          UnknownEncryptionKey
"""

from __future__ import annotations

from typing import Any


class PgqueueError(Exception):
    """Base class of every error pgqueue raises on purpose."""


class ConfigurationError(PgqueueError):
    """A setting is missing or invalid."""


class InvalidDSN(ConfigurationError):
    """The database address cannot be used."""


class EncryptionKeyMissing(ConfigurationError):
    """Encryption was requested but no key is configured (PGQUEUE_ENCRYPTION_KEYS)."""


class EmbeddedServerError(ConfigurationError):
    """The embedded PostgreSQL server could not be started or is not allowed."""


class DatabaseUnavailable(PgqueueError):
    """The database could not be reached; nothing was written."""


class SchemaNotReady(PgqueueError):
    """The pgqueue schema is missing or out of date: run `pgqueue migrate`."""


class EnqueueError(PgqueueError):
    """A job could not be enqueued; nothing was written."""


class InvalidQueueName(EnqueueError):
    """A queue name must match [a-z0-9_-]{1,63}."""


class InvalidPriority(EnqueueError):
    """A priority must be an integer or one of critical, high, normal, low."""


class ArgsNotSerializable(EnqueueError):
    """Job args must be a JSON object that PostgreSQL's jsonb accepts."""


class PayloadTooLarge(EnqueueError):
    """The serialised args exceed the payload size limit."""


class UnknownTask(EnqueueError):
    """No task is registered under that name."""


class InvalidEnqueueOption(EnqueueError):
    """An enqueue option (delay, run_at, max_attempts, tags, ...) is out of range."""


class InvalidArgs(EnqueueError, TypeError):
    """The args do not fit the task handler's signature (unexpected or missing names)."""


class InvalidDependency(EnqueueError):
    """A ``depends_on`` names a job that does not exist (never enqueued, deleted or pruned), one
    the failure policy cannot wait on, or a spec outside the batch; nothing was enqueued."""


class DependencyCycle(EnqueueError):
    """The jobs of one ``enqueue_many`` batch depend on each other in a cycle; nothing was enqueued."""


class WorkflowNotFound(PgqueueError):
    """No job carries this workflow id."""


class ScheduleError(PgqueueError):
    """A cron schedule is invalid."""


class InvalidCron(ScheduleError):
    """The cron expression cannot be parsed."""


class InvalidTimezone(ScheduleError):
    """The time zone is not a known IANA name."""


class InvalidSchedule(ScheduleError):
    """A schedule's name, task, misfire policy or max_catchup breaks its rule."""


class ScheduleExists(ScheduleError):
    """A schedule with that name already exists."""


class ScheduleNotFound(ScheduleError):
    """No schedule has that name."""


class JobNotFound(PgqueueError):
    """No job has that id."""


class QueueNotFound(PgqueueError):
    """No queue has that name: no row in pgqueue.queues and no job in it."""


class BreakerNotFound(PgqueueError):
    """No circuit breaker is declared for that task (``pgqueue breakers reset``)."""


class InvalidJobState(PgqueueError):
    """The job is not in a state that allows this action."""


class InvalidQueueLimits(PgqueueError):
    """A queue limit is malformed: concurrency is a whole number >= 1, rate is N/s, N/m, N/h or N/<duration>."""


class InvalidFilter(PgqueueError):
    """A listing filter, cursor or page size is malformed."""


class JobWaitTimeout(PgqueueError, TimeoutError):
    """The job did not finish within the time the caller was willing to wait."""


class JobUnsuccessful(PgqueueError):
    """The job finished without a result (:meth:`pgqueue.App.result`): it failed or was cancelled."""

    def __init__(self, message: str, *, job_id: int, task: str, last_error: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.task = task
        #: The job's ``last_error`` (``type``, ``message``, ``traceback``), decrypted when the app
        #: holds the key; None when there is none.
        self.last_error = last_error

    @property
    def error_type(self) -> str | None:
        """The name of the exception type the handler raised last (e.g. ``"ValueError"``)."""
        return None if self.last_error is None else self.last_error.get("type")


class JobFailed(JobUnsuccessful):
    """The job failed: no attempts left, or discarded. ``error_type`` and ``last_error`` say why."""


class JobCancelled(JobUnsuccessful):
    """The job was cancelled before it completed."""


class DecryptionError(PgqueueError):
    """An encrypted payload could not be decrypted with the configured keys."""


class UnknownEncryptionKey(DecryptionError):
    """The payload was encrypted with a key that is not in PGQUEUE_ENCRYPTION_KEYS."""
