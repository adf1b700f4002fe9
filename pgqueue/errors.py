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
    │                            InvalidDependency, DependencyCycle
    ├── ScheduleError            InvalidCron, InvalidTimezone, InvalidSchedule, ScheduleExists,
    │                            ScheduleNotFound
    ├── JobNotFound
    ├── WorkflowNotFound
    ├── QueueNotFound
    ├── InvalidJobState
    ├── InvalidQueueLimits
    ├── InvalidFilter
    ├── JobWaitTimeout           (also a TimeoutError)
    └── DecryptionError          UnknownEncryptionKey
"""

from __future__ import annotations


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


class InvalidJobState(PgqueueError):
    """The job is not in a state that allows this action."""


class InvalidQueueLimits(PgqueueError):
    """A queue limit is malformed: concurrency is a whole number >= 1, rate is N/s, N/m, N/h or N/<duration>."""


class InvalidFilter(PgqueueError):
    """A listing filter, cursor or page size is malformed."""


class JobWaitTimeout(PgqueueError, TimeoutError):
    """The job did not finish within the time the caller was willing to wait."""


class DecryptionError(PgqueueError):
    """An encrypted payload could not be decrypted with the configured keys."""


class UnknownEncryptionKey(DecryptionError):
    """The payload was encrypted with a key that is not in PGQUEUE_ENCRYPTION_KEYS."""
