"""The App: task registry, settings, and enqueueing on the caller's own transaction."""

from __future__ import annotations

import asyncio
import functools
import getpass
import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar, overload

from pgqueue._crypto import Keyring
from pgqueue._db.connections import async_connection, sync_connection
from pgqueue._db.jobs import COPY_MIN_JOBS, AsyncJobStore, DependencyLayout, JobStore, NewJob
from pgqueue._db.sessions import open_async_connection, open_connection
from pgqueue._payload import (
    MAX_TASK_NAME_LENGTH,
    MAX_UNIQUE_KEY_BYTES,
    check_queue_name,
    encode_args,
    is_storable_text,
    is_task_name,
)
from pgqueue._tracing import Tracing, with_carrier
from pgqueue.backoff import DEFAULT_BACKOFF, Backoff
from pgqueue.breakers import CircuitBreaker
from pgqueue.errors import (
    ConfigurationError,
    DependencyCycle,
    EncryptionKeyMissing,
    InvalidArgs,
    InvalidDependency,
    InvalidEnqueueOption,
    UnknownTask,
)
from pgqueue.jobs import Job, JobSpec
from pgqueue.settings import Settings, resolve_dsn
from pgqueue.tasks import DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY, DEFAULT_QUEUE, Priority, Task, resolve_priority

if TYPE_CHECKING:
    from pgqueue.jobs import Job
    from pgqueue.schedules import ScheduleSpec
    from pgqueue.typing import AsyncConnection, AsyncPsycopgConnection, Connection, PsycopgConnection
    from pgqueue.workflows import Flow, Workflow

P = ParamSpec("P")
R = TypeVar("R")

_MAX_TAGS = 32
# enqueue_many writes this many jobs per statement (one round trip each).
_BATCH = 2500
_MAX_TAG_LENGTH = 128
#: Longest delay (and furthest run_at from now): 100 years, also the cap on a retry's delay.
MAX_DELAY_SECONDS = 100 * 365 * 86400.0
#: Earliest run_at accepted: an earlier one only means "now", and much earlier ones (year 1 in a
#: zone east of UTC) are BC in UTC, which PostgreSQL stores and Python cannot read back.
EARLIEST_RUN_AT = datetime(1970, 1, 1, tzinfo=UTC)


def _delay_seconds(delay: float | timedelta | None) -> float:
    if delay is None:
        return 0.0
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
    valid = isinstance(seconds, int | float) and not isinstance(seconds, bool)
    if not valid or not math.isfinite(seconds) or not 0 <= seconds <= MAX_DELAY_SECONDS:
        raise InvalidEnqueueOption(f"delay {delay!r} must be a number of seconds (or a timedelta) "
                                   f"from 0 to {MAX_DELAY_SECONDS:.0f} (100 years)")
    return float(seconds)


#: Types whose equal values validate alike (bool is left out: True == 1, but is no max_attempts).
_EXACT_TYPES = (str, int, type(None))


def _shared_checks_key(spec: JobSpec) -> tuple[str, str | None, int | str | None, int | None] | None:
    """What every column but args is validated from, for a spec whose other options are unset;
    None: the spec has options of its own (or values of other types) and is validated in full."""
    if (spec.unique_key is not None or spec.run_at is not None or spec.delay is not None or spec.tags is not None
            or spec.group is not None or spec.depends_on or spec.on_dependency_failure is not None
            or spec.encrypt is True):
        return None
    if (type(spec.task) is not str or type(spec.queue) not in _EXACT_TYPES
            or type(spec.priority) not in _EXACT_TYPES or type(spec.max_attempts) not in _EXACT_TYPES):
        return None
    return spec.task, spec.queue, spec.priority, spec.max_attempts


def _check_run_at(run_at: datetime | None) -> datetime | None:
    if run_at is None:
        return None
    if not isinstance(run_at, datetime) or run_at.tzinfo is None or run_at.utcoffset() is None:
        raise InvalidEnqueueOption(f"run_at {run_at!r} must be a timezone-aware datetime")
    # A run_at far enough out (or back) becomes a timestamp PostgreSQL stores but Python cannot
    # read back (after year 9999, or BC once in UTC): every listing that met the row crashed.
    # The local clock bounds it, generously: the database's own clock is never that far off.
    try:
        too_late = run_at - datetime.now(UTC) > timedelta(seconds=MAX_DELAY_SECONDS)
        too_early = run_at < EARLIEST_RUN_AT
    except OverflowError:
        too_late = too_early = True
    if too_late or too_early:
        raise InvalidEnqueueOption(f"run_at {run_at.isoformat()} must be between {EARLIEST_RUN_AT.date()} "
                                   "and 100 years from now")
    return run_at


def _shown(value: object) -> str:
    """A bad value in an error message: repr-escaped (no control characters), and cut short."""
    text = ascii(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _check_tags(tags: Iterable[str] | None) -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, str):
        raise InvalidEnqueueOption("tags must be a list of strings, not a single string")
    result = tuple(tags)
    if len(result) > _MAX_TAGS:
        raise InvalidEnqueueOption(f"a job takes at most {_MAX_TAGS} tags, got {len(result)}")
    for tag in result:
        if not isinstance(tag, str) or not 0 < len(tag) <= _MAX_TAG_LENGTH or not is_storable_text(tag):
            raise InvalidEnqueueOption(
                f"tag {_shown(tag)} must be a non-empty string of at most {_MAX_TAG_LENGTH} characters, "
                "without NUL characters or lone surrogates")
    return result


def _check_max_attempts(attempts: Any) -> int:
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 10_000:
        raise InvalidEnqueueOption(f"max_attempts {attempts!r} must be an integer from 1 to 10000")
    return attempts


def _check_unique_key(unique_key: str | None) -> None:
    if unique_key is not None and (
            not isinstance(unique_key, str) or not unique_key or not is_storable_text(unique_key)
            or len(unique_key.encode("utf-8")) > MAX_UNIQUE_KEY_BYTES):
        raise InvalidEnqueueOption(
            f"unique_key {_shown(unique_key)} must be a non-empty string of at most {MAX_UNIQUE_KEY_BYTES} "
            "UTF-8 bytes, without NUL characters or lone surrogates")


def _check_group(group: str | None) -> None:
    if group is not None and (not isinstance(group, str) or not group or not is_storable_text(group)
                              or len(group) > 255):
        raise InvalidEnqueueOption(f"group {_shown(group)} must be a non-empty string of at most 255 characters, "
                                   "without NUL characters or lone surrogates")


def check_enqueue_options(*, queue: str | None = None, priority: int | str | None = None,
                          delay: float | timedelta | None = None, run_at: datetime | None = None,
                          max_attempts: int | None = None, unique_key: str | None = None,
                          tags: Iterable[str] | None = None, group: str | None = None,
                          depends_on: Iterable[int] | None = None, on_dependency_failure: str | None = None) -> None:
    """Check one job's options as :meth:`App.enqueue` does, with no task, args or database (what
    ``pgqueue enqueue`` checks before it connects).

    Raises:
        InvalidQueueName, InvalidPriority, InvalidEnqueueOption, InvalidDependency: as App.enqueue.
    """
    if delay is not None and run_at is not None:
        raise InvalidEnqueueOption("give delay or run_at, not both")
    if queue is not None:
        check_queue_name(queue)
    resolve_priority(priority)
    _delay_seconds(delay)
    _check_run_at(run_at)
    if max_attempts is not None:
        _check_max_attempts(max_attempts)
    _check_unique_key(unique_key)
    _check_group(group)
    _check_tags(tags)
    _check_dependency_ids(depends_on or ())
    _check_policy(on_dependency_failure)


def _check_policy(policy: str | None) -> str:
    if policy is None:
        return "cancel"
    if policy not in ("cancel", "run"):
        raise InvalidEnqueueOption(f"on_dependency_failure {policy!r} must be 'cancel' or 'run'")
    return policy


def _check_dependency_ids(depends_on: Iterable[Any]) -> tuple[int, ...]:
    ids: dict[int, None] = {}
    for dependency in depends_on:
        if isinstance(dependency, bool) or not isinstance(dependency, int) or dependency < 1:
            raise InvalidDependency(f"depends_on item {dependency!r} must be a job id (a positive integer)")
        ids[dependency] = None
    return tuple(ids)


def _check_acyclic(batch_dependencies: Sequence[tuple[int, ...]]) -> None:
    """Kahn's algorithm over the batch's own edges: what is left unsorted sits on a cycle."""
    waiting_on = [len(set(deps)) for deps in batch_dependencies]
    dependents: dict[int, list[int]] = {}
    for index, deps in enumerate(batch_dependencies):
        for dependency in set(deps):
            dependents.setdefault(dependency, []).append(index)
    ready = [index for index, count in enumerate(waiting_on) if count == 0]
    sorted_count = 0
    while ready:
        index = ready.pop()
        sorted_count += 1
        for dependent in dependents.get(index, ()):
            waiting_on[dependent] -= 1
            if waiting_on[dependent] == 0:
                ready.append(dependent)
    if sorted_count < len(batch_dependencies):
        cycle = sorted(index for index, count in enumerate(waiting_on) if count > 0)
        raise DependencyCycle(f"the specs at positions {cycle} of the batch depend on each other in a cycle; "
                              "nothing was enqueued")


class TaskDecorator(Protocol):
    """What ``@app.task(...)`` returns: registers the decorated handler and returns its Task.

    A handler whose parameters after the ``job`` are named gives a ``Task[P, R]`` whose enqueue
    is checked against them. One that also takes ``**kwargs`` with a ``job`` that is not
    positional-only gives a ``Task[..., R]`` (any arguments; still checked at enqueue time).
    """

    @overload
    def __call__(self, fn: Callable[Concatenate[Job, P], R], /) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[..., R], /) -> Task[..., R]: ...

    def __call__(self, fn: Callable[..., R], /) -> Task[..., R]: ...


class App:
    """A pgqueue application: the registry of tasks and the settings workers and enqueuers share.

    Args:
        dsn: the database. When None, ``PGQUEUE_DSN``, ``DATABASE_URL`` or the embedded server is
            used the first time a connection is needed.
        settings: overrides for :class:`pgqueue.settings.Settings` (default: read the environment).
        require_registered_tasks: refuse to enqueue task names this app has not registered
            (off by default, so a producer can enqueue tasks that only the workers define).

    Example:
        >>> app = pgqueue.App()
        >>> @app.task(queue="emails", max_attempts=5)
        ... def send_email(job: pgqueue.Job, to: str) -> None: ...
    """

    def __init__(self, dsn: str | None = None, *, settings: Settings | None = None,
                 require_registered_tasks: bool = False) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        # Normalised as every other DSN pgqueue takes: the postgresql+psycopg:// form went to
        # psycopg as it was, and App.connect() and enqueue(None, ...) failed to parse it.
        self._dsn = resolve_dsn(dsn).dsn if dsn is not None else None  # a blank one is refused
        self.tasks: dict[str, Task[..., Any]] = {}
        self.schedules: dict[str, ScheduleSpec] = {}
        self.require_registered_tasks = require_registered_tasks
        #: Set by a tracing integration (``pgqueue.contrib.otel.instrument``); None: no tracing.
        self.tracing: Tracing | None = None

    # --- configuration ---

    @functools.cached_property
    def keyring(self) -> Keyring:
        """The encryption keys of ``settings.encryption_keys``, parsed on first use.

        Raises:
            EncryptionKeyMissing: no key is configured.
            ConfigurationError: a key is malformed (the message names its position, never the key).
        """
        return Keyring(self.settings.encryption_keys)

    @property
    def dsn(self) -> str:
        """The resolved database URL (may start the embedded server on first use)."""
        if self._dsn is None:
            self._dsn = resolve_dsn(self.settings.dsn).dsn
        return self._dsn

    def connect(self, *, autocommit: bool = False) -> PsycopgConnection:
        """Open a new psycopg connection to the app's database (the caller closes it)."""
        return open_connection(self.dsn, autocommit=autocommit)

    async def _connect_async(self, *, autocommit: bool = False) -> AsyncPsycopgConnection:
        """Async twin of :meth:`connect`: what ``enqueue_async(None, ...)`` enqueues on."""
        # Resolving the DSN the first time may start the embedded server (seconds of blocking
        # work): on a thread, so the caller's event loop keeps running meanwhile.
        dsn = self._dsn if self._dsn is not None else await asyncio.to_thread(lambda: self.dsn)
        return await open_async_connection(dsn, autocommit=autocommit)

    @overload
    def task(self, fn: Callable[Concatenate[Job, P], R], /) -> Task[P, R]: ...

    @overload
    def task(self, fn: Callable[..., R], /) -> Task[..., R]: ...

    @overload
    def task(
        self, fn: None = None, /, *, name: str | None = None, queue: str = DEFAULT_QUEUE,
        priority: Priority = DEFAULT_PRIORITY, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | None = None, backoff: Backoff = DEFAULT_BACKOFF,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        discard_on: tuple[type[BaseException], ...] = (), transactional: bool = False,
        encrypt: bool = False, tags: Sequence[str] = (), circuit_breaker: CircuitBreaker | None = None,
        concurrency: int | None = None, rate: str | None = None, group_concurrency: int | None = None,
    ) -> TaskDecorator: ...

    def task(
        self, fn: Callable[Concatenate[Job, P], R] | None = None, /, *, name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: Priority = DEFAULT_PRIORITY, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | None = None, backoff: Backoff = DEFAULT_BACKOFF,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        discard_on: tuple[type[BaseException], ...] = (), transactional: bool = False,
        encrypt: bool = False, tags: Sequence[str] = (), circuit_breaker: CircuitBreaker | None = None,
        concurrency: int | None = None, rate: str | None = None, group_concurrency: int | None = None,
    ) -> Task[P, R] | Task[..., R] | TaskDecorator:
        """Register a handler as a task. Sync and ``async def`` handlers are both supported.

        Args:
            name: the task name stored in jobs (default: the function's ``module.qualname``).
            queue: default queue for its jobs.
            priority: default priority; smaller runs first (int or critical/high/normal/low).
            max_attempts: attempts before the job is ``failed``.
            timeout: seconds an attempt may run before it is failed (and retried per policy).
            backoff: delay between attempts.
            retry_on: exception types worth retrying; others fail the job at once.
            discard_on: exception types that fail the job at once.
            transactional: give the handler ``job.connection``; its writes commit with the
                job's completion (exactly-once effects for those writes).
            encrypt: store this task's args, results and error text only as ciphertext (needs
                ``PGQUEUE_ENCRYPTION_KEYS``); a job's ``encrypt=False`` cannot turn it off.
            tags: default plaintext labels for its jobs (never PHI).
            circuit_breaker: a :class:`pgqueue.CircuitBreaker` shared by every worker: after too
                many failed attempts the task's jobs wait (unclaimed, no attempt used) until a
                trial succeeds. The worker writes it to ``pgqueue.circuit_breakers`` at start.
            concurrency: at most this many of its jobs run at once, across every worker.
            rate: at most N starts per period across every worker (``"100/m"``, ``"20/s"``,
                ``"100/30s"``): a sliding window on the database clock.
            group_concurrency: at most this many of its jobs with the same ``group`` (given at
                enqueue) run at once, in (priority, run_at, id) order within the group.

        The limits are stored in ``pgqueue.task_limits`` by every worker at start, and enforced by
        the claim in the database (see the flow-control docs).

        Example:
            >>> @app.task(name="send-email", queue="emails", max_attempts=5, timeout=30)
            ... def send_email(job: pgqueue.Job, to: str, subject: str) -> dict: ...
        """

        def register(func: Callable[Concatenate[Job, P], R]) -> Task[P, R]:
            task_name = name or f"{func.__module__}.{func.__qualname__}"
            if not task_name or len(task_name) > MAX_TASK_NAME_LENGTH:
                raise ConfigurationError(f"task name {task_name!r} must be 1-{MAX_TASK_NAME_LENGTH} characters")
            if max_attempts < 1:
                raise ConfigurationError(f"task {task_name!r}: max_attempts {max_attempts} must be >= 1")
            if timeout is not None and not timeout > 0:  # written so that NaN is refused too
                raise ConfigurationError(f"task {task_name!r}: timeout {timeout} must be > 0")
            if not isinstance(backoff, Backoff):
                raise ConfigurationError(f"task {task_name!r}: backoff must be a pgqueue.Backoff such as "
                                         f"Backoff.exponential() or Backoff.fixed(10), got {backoff!r}")
            if circuit_breaker is not None and not isinstance(circuit_breaker, CircuitBreaker):
                raise ConfigurationError(f"task {task_name!r}: circuit_breaker must be a pgqueue.CircuitBreaker")
            for option, value in (("concurrency", concurrency), ("group_concurrency", group_concurrency)):
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                    raise ConfigurationError(f"task {task_name!r}: {option} {value!r} must be a whole number >= 1")
            rate_limit, rate_period = _task_rate(task_name, rate)
            if task_name in self.tasks and self.tasks[task_name].fn is not func:
                raise ConfigurationError(f"task {task_name!r} is registered twice")
            _check_takes_job(task_name, func)
            registered = Task(
                app=self, fn=func, name=task_name, queue=check_queue_name(queue),
                priority=resolve_priority(priority), max_attempts=max_attempts, timeout=timeout,
                backoff=backoff, retry_on=_exception_types(task_name, "retry_on", retry_on),
                discard_on=_exception_types(task_name, "discard_on", discard_on),
                transactional=transactional, encrypt=encrypt, tags=_check_tags(tags),
                circuit_breaker=circuit_breaker,
                concurrency=concurrency, rate_limit=rate_limit, rate_period_seconds=rate_period,
                group_concurrency=group_concurrency,
            )
            for spec in self.schedules.values():  # declared before their task: checked now
                if spec.task == task_name:
                    _check_schedule_args(registered, spec.name, spec.args)
            self.tasks[task_name] = registered
            return registered

        return register(fn) if fn is not None else register  # type: ignore[return-value]

    def schedule(self, name: str, *, cron: str, task: str, args: dict[str, Any] | None = None,
                 timezone: str = "UTC", queue: str | None = None, priority: Priority | None = None,
                 misfire: str = "once", max_catchup: int = 100) -> ScheduleSpec:
        """Declare a cron schedule in code; ``pgqueue scheduler`` syncs it to the database.

        Example:
            >>> app.schedule("daily-report", cron="0 9 * * *", task="render-report",
            ...              args={"report_id": 1}, timezone="America/New_York", queue="reports")
        """
        from pgqueue.schedules import ScheduleSpec

        known = self.tasks.get(task)
        if known is not None:  # else when the task is declared (a task of another app is not checked)
            _check_schedule_args(known, name, args or {})
        spec = ScheduleSpec.build(
            name=name, cron=cron, task=task, args=args or {}, timezone=timezone,
            queue=queue or (known.queue if known else DEFAULT_QUEUE),
            priority=resolve_priority(priority, known.priority if known else DEFAULT_PRIORITY),
            misfire=misfire, max_catchup=max_catchup, max_payload_bytes=self.settings.max_payload_bytes,
        )
        self.schedules[name] = spec
        return spec

    # --- enqueueing ---

    def _new_job(self, task: str, args: Any, *, queue: str | None = None, priority: int | str | None = None,
                 delay: float | timedelta | None = None, run_at: datetime | None = None,
                 max_attempts: int | None = None, unique_key: str | None = None,
                 encrypt: bool | None = None, tags: Iterable[str] | None = None,
                 group: str | None = None, dependencies: dict[str, Any] | None = None) -> NewJob:
        if not is_task_name(task):
            raise UnknownTask(f"task name {_shown(task)} must be a non-empty string of at most "
                              f"{MAX_TASK_NAME_LENGTH} characters, without NUL characters or lone surrogates")
        known = self.tasks.get(task)
        if known is None and self.require_registered_tasks:
            raise UnknownTask(f"task {task!r} is not registered with this app")
        # encrypt=False never turns encryption off: a task declared encrypt=True and compliance mode
        # are policies, and a caller's flag must not be able to write their payloads in plaintext.
        sealed = encrypt is True or (known is not None and known.encrypt) or self.settings.encrypt_all
        if sealed and not self.settings.encryption_keys:
            raise EncryptionKeyMissing(
                "encryption requested but PGQUEUE_ENCRYPTION_KEYS is not set (see `pgqueue keys generate`)")
        if delay is not None and run_at is not None:
            raise InvalidEnqueueOption("give delay or run_at, not both")
        attempts = _check_max_attempts(
            max_attempts if max_attempts is not None else (known.max_attempts if known else DEFAULT_MAX_ATTEMPTS))
        _check_unique_key(unique_key)
        _check_group(group)
        default_tags = known.tags if known else ()
        args_text = self._args_text(args)
        return NewJob(
            task=task,
            queue=check_queue_name(queue if queue is not None else (known.queue if known else DEFAULT_QUEUE)),
            priority=resolve_priority(priority, known.priority if known else DEFAULT_PRIORITY),
            args=None if sealed else args_text,
            args_encrypted=self.keyring.encrypt(args_text.encode("utf-8"), "args", task) if sealed else None,
            max_attempts=attempts,
            run_at=_check_run_at(run_at),
            delay=_delay_seconds(delay),
            unique_key=unique_key,
            tags=_check_tags(tags) if tags is not None else default_tags,
            group_key=group,
            **(dependencies or {}),
        )

    def _args_text(self, args: Any) -> str:
        """The JSON text a job's args are stored as, with the current trace context; validated (JSON,
        size limit) on the plaintext, before anything is encrypted."""
        return encode_args(with_carrier(self.tracing, args if args is not None else {}),
                           self.settings.max_payload_bytes)

    def _spec_jobs(self, specs: Iterable[JobSpec]) -> Iterator[NewJob]:
        """:meth:`_spec_job` of each spec, lazily. Specs that differ only in their (plaintext) args
        share one check of everything else: the first is validated in full, the others only have
        their args encoded. The checks cost a 50k bulk about 6 us a job and come out the same for
        every spec of the usual batch (one task, its defaults)."""
        checked: dict[tuple[str, str | None, int | str | None, int | None], NewJob] = {}
        for spec in specs:
            key = _shared_checks_key(spec)
            first = checked.get(key) if key is not None else None
            if first is None:
                job = self._spec_job(spec)
                # Encrypted args are sealed job by job; a template only serves plaintext ones.
                if key is not None and job.args is not None:
                    checked[key] = job
                yield job
                continue
            yield NewJob(task=first.task, queue=first.queue, priority=first.priority,
                         args=self._args_text(spec.args), max_attempts=first.max_attempts, run_at=None,
                         delay=first.delay, unique_key=None, tags=first.tags, group_key=None)

    def _spec_job(self, spec: JobSpec, dependencies: dict[str, Any] | None = None) -> NewJob:
        return self._new_job(
            spec.task, spec.args, queue=spec.queue, priority=spec.priority, delay=spec.delay, run_at=spec.run_at,
            max_attempts=spec.max_attempts, unique_key=spec.unique_key, encrypt=spec.encrypt, tags=spec.tags,
            group=spec.group,
            dependencies=dependencies,
        )

    def enqueue(self, conn: Connection | None, task: str, args: dict[str, Any] | None = None, *,
                queue: str | None = None, priority: Priority | None = None, delay: float | timedelta | None = None,
                run_at: datetime | None = None, max_attempts: int | None = None, unique_key: str | None = None,
                encrypt: bool | None = None, tags: Iterable[str] | None = None, group: str | None = None,
                depends_on: Iterable[int] | None = None, on_dependency_failure: str | None = None) -> int:
        """Enqueue one job on ``conn``, inside the caller's transaction, and return its id.

        pgqueue never commits or rolls back ``conn``: roll back and the job never existed;
        commit and it is durable and a worker is woken. Pass ``conn=None`` to have pgqueue open
        its own connection to the app's database and commit at once.

        Args:
            conn: a psycopg ``Connection``, a SQLAlchemy ``Session``/``Connection`` (psycopg driver)
                or Django's ``connection`` (postgresql backend on psycopg 3):
                :data:`pgqueue.typing.Connection`; None to use a connection of pgqueue's own.
            task: the task name.
            args: keyword arguments for the handler (a JSON object).
            queue, priority, max_attempts: override the task's defaults; priority is an int
                (smaller runs first) or critical/high/normal/low (:data:`pgqueue.Priority`).
            delay: seconds (or timedelta) to wait before the job becomes available.
            run_at: aware datetime at which the job becomes available.
            unique_key: while a job with this key is scheduled, available or running, return its
                id instead of inserting another.
            encrypt: True stores args (and later the result and error text) only as ciphertext.
                None or False follow the task (``encrypt=True``) and compliance mode
                (``PGQUEUE_ENCRYPT_ALL``), which always encrypt: False cannot opt out of them.
            tags: short plaintext labels (never PHI).
            group: the job's group key (``"patient:42"``): a task declared with
                ``group_concurrency=N`` runs at most N jobs of one group at once, in order.
                Plaintext, like tags (never PHI).
            depends_on: ids of jobs that must complete first; until then the job is ``waiting``,
                and it becomes available (or scheduled) in the transaction that completes the
                last of them. A job added to a workflow's job joins that workflow.
            on_dependency_failure: ``"cancel"`` (default: when a dependency fails for good, this
                job and its own dependents end ``cancelled``) or ``"run"`` (it runs anyway).

        Returns:
            The job id (the existing job's id when ``unique_key`` matched a live job).

        Raises:
            pgqueue.errors.EnqueueError: bad queue name, priority, args or options (nothing written).
            pgqueue.errors.EncryptionKeyMissing: encryption applies but no key is configured (nothing written).
            pgqueue.errors.InvalidDependency: a dependency does not exist, or failed while the policy
                is "cancel" (nothing written).
            pgqueue.errors.DatabaseUnavailable: the database could not be reached.

        Example:
            >>> with psycopg.connect(dsn) as conn:
            ...     job_id = app.enqueue(conn, "send-email", {"to": "a@example.com"}, delay=60)
        """
        new_job = self._new_job(task, args, queue=queue, priority=priority, delay=delay, run_at=run_at,
                                max_attempts=max_attempts, unique_key=unique_key, encrypt=encrypt, tags=tags,
                                group=group)
        dependent = self._single_dependent(new_job, depends_on, on_dependency_failure)
        if dependent is not None:
            if conn is None:
                with self.connect() as own:
                    return JobStore(own).insert_dependent_jobs_atomically(*dependent, actor=_actor())[0]
            return JobStore(sync_connection(conn)).insert_dependent_jobs_atomically(*dependent, actor=_actor())[0]
        if conn is None:
            with self.connect() as own:
                return JobStore(own).insert_job(new_job, actor=_actor())
        return JobStore(sync_connection(conn)).insert_job(new_job, actor=_actor())

    def enqueue_many(self, conn: Connection | None, jobs: Iterable[JobSpec]) -> list[int]:
        """Enqueue many jobs, thousands per round trip; returns their ids in input order.

        All or nothing: one bad spec raises its error and enqueues none of the jobs.

        Example:
            >>> ids = app.enqueue_many(conn, [pgqueue.JobSpec("send-email", {"to": t}) for t in recipients])
        """
        specs = list(jobs)
        if conn is None:
            with self.connect() as own:
                return self._enqueue_many(JobStore(own), specs)
        return self._enqueue_many(JobStore(sync_connection(conn)), specs)

    def _single_dependent(self, job: NewJob, depends_on: Iterable[int] | None,
                          policy: str | None) -> tuple[DependencyLayout, Callable[[int], NewJob]] | None:
        external = _check_dependency_ids(depends_on or ())
        checked = _check_policy(policy)
        if not external:
            return None
        if job.unique_key is not None:
            raise InvalidEnqueueOption("unique_key cannot be combined with depends_on")
        job = replace(job, depends_on=external, on_dependency_failure=checked)
        layout = DependencyLayout(count=1, external=sorted(external), has_dependents=[False], copied=[])
        return layout, lambda _: job

    def _dependent_batch(self, specs: Sequence[JobSpec],
                         workflow_id: str | None = None) -> tuple[DependencyLayout, Callable[[int], NewJob]]:
        """The layout of a batch in which some jobs depend on others (by spec object) or on existing
        jobs (by id), checked before any job is validated (references outside the batch, cycles),
        and the function that validates the i-th job (called while the batch is written)."""
        position: dict[int, int] = {}
        for index, spec in enumerate(specs):
            if spec.unique_key is not None:
                raise InvalidEnqueueOption(f"the spec at position {index} has a unique_key: unique_key cannot be "
                                           "used in a batch with depends_on")
            if id(spec) in position:
                raise InvalidDependency(f"the spec at position {index} appears twice in the batch "
                                        "(a batch that uses depends_on needs distinct JobSpec objects)")
            position[id(spec)] = index
        fields: list[dict[str, Any]] = []
        has_dependents = [False] * len(specs)
        external_all: dict[int, None] = {}
        policies: dict[str | None, str] = {}
        for index, spec in enumerate(specs):
            if spec.on_dependency_failure not in policies:
                policies[spec.on_dependency_failure] = _check_policy(spec.on_dependency_failure)
            external: list[int] = []
            batch: dict[int, None] = {}  # an ordered set: a group's callback lists thousands
            for dependency in spec.depends_on:
                if isinstance(dependency, JobSpec):
                    if id(dependency) not in position:
                        raise InvalidDependency(f"the spec at position {index} depends on a JobSpec that is not "
                                                "in the same batch")
                    batch[position[id(dependency)]] = None
                else:
                    external.append(dependency)
            checked = _check_dependency_ids(external)
            external_all.update(dict.fromkeys(checked))
            for dependency_index in batch:
                has_dependents[dependency_index] = True
            fields.append({"depends_on": checked, "depends_on_batch": tuple(batch),
                           "on_dependency_failure": policies[spec.on_dependency_failure], "workflow_id": workflow_id})
        _check_acyclic([f["depends_on_batch"] for f in fields])
        copyable = [i for i, (spec, f) in enumerate(zip(specs, fields, strict=True))
                    if not f["depends_on"] and not f["depends_on_batch"] and spec.run_at is None and spec.delay is None]
        layout = DependencyLayout(count=len(specs), external=sorted(external_all), has_dependents=has_dependents,
                                  copied=copyable if len(copyable) >= COPY_MIN_JOBS else [])
        # Each NewJob is built once with its dependencies (dataclasses.replace cost 24 us a job).
        return layout, lambda i: self._spec_job(specs[i], fields[i])

    def enqueue_workflow(self, conn: Connection | None, flow: Flow) -> Workflow:
        """Enqueue a chain or group (see :mod:`pgqueue.workflows`) atomically, in one statement on
        the caller's transaction; every job of it gets the same new ``workflow_id``.

        Returns:
            The :class:`pgqueue.workflows.Workflow`: its id and its jobs' ids, in the order the flow
            lists its signatures.

        Example:
            >>> wf = app.enqueue_workflow(conn, pgqueue.group([export.s(facility=f) for f in ids],
            ...                                               then=zip_exports.s()))
        """
        from pgqueue.workflows import Workflow, compile_flow, new_workflow_id

        workflow_id = new_workflow_id()
        layout, make_job = self._dependent_batch(compile_flow(flow), workflow_id)
        if conn is None:
            with self.connect() as own:
                ids = JobStore(own).insert_dependent_jobs_atomically(layout, make_job, actor=_actor())
        else:
            ids = JobStore(sync_connection(conn)).insert_dependent_jobs_atomically(layout, make_job, actor=_actor())
        return Workflow(id=workflow_id, job_ids=ids)

    def _enqueue_many(self, store: JobStore, specs: list[JobSpec]) -> list[int]:
        if any(spec.depends_on or spec.on_dependency_failure is not None for spec in specs):
            return store.insert_dependent_jobs_atomically(*self._dependent_batch(specs), actor=_actor())
        if len(specs) >= COPY_MIN_JOBS and all(
                spec.unique_key is None and spec.run_at is None and spec.delay is None for spec in specs):
            # All available at once: one COPY, each spec validated as it is written, so Python
            # validates while the server stores the rows before it (10k jobs: 110 -> 70 ms).
            return store.copy_all_jobs(self._spec_jobs(specs), len(specs), actor=_actor())
        return store.insert_job_batches(self._validated_batches(specs), actor=_actor())

    def _validated_batches(self, specs: list[JobSpec]) -> Iterator[list[NewJob]]:
        """Validated specs in batches of thousands; the next batch is validated in a helper thread
        while the current one's INSERT waits on the server (the two took about 5 and 11 us per job,
        one after the other). The store writes all batches under one savepoint, so a bad spec in
        a later batch still leaves nothing written."""
        batches = [specs[i:i + _BATCH] for i in range(0, len(specs), _BATCH)] or [[]]
        if len(batches) == 1:
            yield list(self._spec_jobs(batches[0]))
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgqueue-validate") as pool:
            pending = pool.submit(lambda batch: list(self._spec_jobs(batch)), batches[0])
            for following in batches[1:]:
                ready = pending.result()
                pending = pool.submit(lambda batch: list(self._spec_jobs(batch)), following)
                yield ready
            yield pending.result()

    async def enqueue_async(self, conn: AsyncConnection | None, task: str, args: dict[str, Any] | None = None, *,
                            queue: str | None = None, priority: Priority | None = None,
                            delay: float | timedelta | None = None, run_at: datetime | None = None,
                            max_attempts: int | None = None, unique_key: str | None = None,
                            encrypt: bool | None = None, tags: Iterable[str] | None = None,
                            group: str | None = None, depends_on: Iterable[int] | None = None,
                            on_dependency_failure: str | None = None) -> int:
        """Async twin of :meth:`enqueue` for psycopg ``AsyncConnection`` and SQLAlchemy
        ``AsyncSession``/``AsyncConnection``.

        pgqueue never commits or rolls back ``conn``, as with :meth:`enqueue`. Pass ``conn=None``
        to have pgqueue open its own async connection to the app's database and commit at once.

        Example:
            >>> async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            ...     job_id = await app.enqueue_async(aconn, "send-email", {"to": "a@example.com"})
        """
        new_job = self._new_job(task, args, queue=queue, priority=priority, delay=delay, run_at=run_at,
                                max_attempts=max_attempts, unique_key=unique_key, encrypt=encrypt, tags=tags,
                                group=group)
        dependent = self._single_dependent(new_job, depends_on, on_dependency_failure)
        if conn is None:
            async with await self._connect_async() as own:
                return await self._insert_async(AsyncJobStore(own), new_job, dependent)
        return await self._insert_async(AsyncJobStore(await async_connection(conn)), new_job, dependent)

    @staticmethod
    async def _insert_async(store: AsyncJobStore, new_job: NewJob,
                            dependent: tuple[DependencyLayout, Callable[[int], NewJob]] | None) -> int:
        if dependent is not None:
            return (await store.insert_dependent_jobs_atomically(*dependent, actor=_actor()))[0]
        return await store.insert_job(new_job, actor=_actor())

    async def enqueue_many_async(self, conn: AsyncConnection | None, jobs: Iterable[JobSpec]) -> list[int]:
        """Async twin of :meth:`enqueue_many` (``conn=None``: on a connection of pgqueue's own,
        committed at once)."""
        specs = list(jobs)
        if conn is None:
            async with await self._connect_async() as own:
                return await self._enqueue_many_async(AsyncJobStore(own), specs)
        return await self._enqueue_many_async(AsyncJobStore(await async_connection(conn)), specs)

    async def _enqueue_many_async(self, store: AsyncJobStore, specs: list[JobSpec]) -> list[int]:
        if any(spec.depends_on or spec.on_dependency_failure is not None for spec in specs):
            return await store.insert_dependent_jobs_atomically(*self._dependent_batch(specs), actor=_actor())
        new_jobs = list(self._spec_jobs(specs))
        return await store.insert_job_batches([new_jobs], actor=_actor())

    # --- results ---

    def result(self, conn: Connection | None, job_id: int, *, timeout: float = 30.0,
               poll_interval: float = 5.0) -> Any:
        """Wait until job ``job_id`` is finished and return its result, or raise why it has none.

        The job must be committed (a job enqueued in a transaction that has not committed yet can
        never run). The wait LISTENs for finished jobs on a session of its own, so it returns within
        the notification latency; it also re-reads the job every ``poll_interval`` seconds.

        Args:
            conn: a connection to look the job up on (psycopg or SQLAlchemy); None to use one of
                pgqueue's own.
            job_id: what enqueue returned.
            timeout: seconds to wait at most.

        Returns:
            The handler's return value as stored (JSON: dicts, lists, str, numbers, None),
            decrypted with this app's keys for an encrypted job.

        Raises:
            pgqueue.errors.JobFailed: the job failed (``error_type``, ``last_error`` say why).
            pgqueue.errors.JobCancelled: the job was cancelled.
            pgqueue.errors.JobWaitTimeout: still not finished after ``timeout`` (a TimeoutError).
            pgqueue.errors.JobNotFound: no such job (or it was deleted while waiting).
            pgqueue.errors.InvalidJobState: the job is not committed yet.

        Example:
            >>> job_id = render.enqueue(conn, report_id=7); conn.commit()
            >>> app.result(conn, job_id, timeout=60)
            {'pages': 12}
        """
        from pgqueue._results import wait_result

        return wait_result(self, conn, job_id, timeout, poll_interval)

    # timeout= as in the sync twin; the caller may wrap it in asyncio.timeout() as well.
    async def result_async(self, conn: AsyncConnection | None, job_id: int, *, timeout: float = 30.0,  # noqa: ASYNC109
                           poll_interval: float = 5.0) -> Any:
        """Async twin of :meth:`result` for psycopg ``AsyncConnection`` and SQLAlchemy async objects
        (``conn=None``: on a connection of pgqueue's own).

        Example:
            >>> job_id = await render.enqueue_async(aconn, report_id=7); await aconn.commit()
            >>> await app.result_async(aconn, job_id, timeout=60)
            {'pages': 12}
        """
        from pgqueue._results import wait_result_async

        return await wait_result_async(self, conn, job_id, timeout, poll_interval)


def _check_schedule_args(task: Task[..., Any], schedule: str, args: dict[str, Any]) -> None:
    # Every run of a schedule whose args do not fit its handler would fail at once (InvalidArgs),
    # for as long as it is deployed: refused where it is declared instead.
    try:
        task.job_args(**args)
    except InvalidArgs as exc:
        raise InvalidArgs(f"schedule {schedule!r}: {exc}") from None


def _check_takes_job(task_name: str, func: Callable[..., Any]) -> None:
    """The worker calls ``func(job, **args)``: a handler with no positional slot for the job failed
    every enqueue (or every attempt) with a TypeError that never said why."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # some builtins and C callables have none: checked at run time
        return
    try:
        signature.bind_partial(None)
    except TypeError:
        raise ConfigurationError(
            f"task {task_name!r}: its handler must take the job (a pgqueue.Job) as its first positional "
            f"parameter, e.g. def handler(job: pgqueue.Job, ...)") from None


def _exception_types(task_name: str, option: str, value: object) -> tuple[type[BaseException], ...]:
    # Checked here: the worker matches a handler's error against them with isinstance(), which raised
    # TypeError for anything else and left the job running under a live worker, never rescued.
    if isinstance(value, tuple | list | set | frozenset) and all(
            isinstance(item, type) and issubclass(item, BaseException) for item in value):
        return tuple(value)
    hint = f" (write ({value.__name__},) for one)" if isinstance(value, type) else ""
    raise ConfigurationError(f"task {task_name!r}: {option} must be a tuple of exception classes, "
                             f"got {value!r}{hint}")


def _task_rate(task_name: str, rate: str | None) -> tuple[int | None, int | None]:
    if rate is None:
        return None, None
    from pgqueue.admin import parse_rate
    from pgqueue.errors import PgqueueError

    try:
        return parse_rate(rate)
    except PgqueueError as exc:
        raise ConfigurationError(f"task {task_name!r}: {exc}") from None


def read_dependency_results(app: App, dsn: str, job: Job) -> dict[int, Any]:
    """``job.dependency_results()`` in a worker: one short connection of its own (the handler may
    be sync or async, and the worker's sessions are not the handler's), results decrypted."""
    import json

    with open_connection(dsn, autocommit=True) as conn:
        rows = JobStore(conn).dependency_results(job.id)
    results: dict[int, Any] = {}
    for job_id, task, state, result, sealed in rows:
        if sealed is not None:
            result = json.loads(app.keyring.decrypt(sealed, "result", task))
        results[job_id] = result if state == "completed" else None
    return results


@functools.cache
def _actor() -> str | None:
    # Cached: the OS user does not change within a process, and getuser() showed up at ~5% of
    # a single-job enqueue's profile.
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None
