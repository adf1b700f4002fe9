"""Tasks: a registered handler with its defaults, and typed enqueueing with per-call options.

A :class:`Task` is generic over its handler's parameters (after the ``job``) and return type, so a
type checker checks ``send_email.enqueue(conn, to=..., subject=...)`` against the handler. Per-call
options never mix with the handler's args: they go through :meth:`Task.options`, which returns an
immutable :class:`BoundTask`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Concatenate, Generic, Literal, ParamSpec, TypeAlias, TypeVar

from pgqueue.backoff import DEFAULT_BACKOFF, Backoff
from pgqueue.breakers import CircuitBreaker
from pgqueue.errors import InvalidArgs, InvalidEnqueueOption, InvalidPriority

if TYPE_CHECKING:
    from pgqueue.app import App
    from pgqueue.jobs import Job
    from pgqueue.typing import AsyncConnection, Connection
    from pgqueue.workflows import Signature

P = ParamSpec("P")
R = TypeVar("R")

_GENERIC_MISMATCH = "args do not match the signature"
#: The named priorities (each maps to an integer in :data:`PRIORITIES`).
PriorityName: TypeAlias = Literal["critical", "high", "normal", "low"]
#: What a ``priority`` parameter takes: an integer from -32768 to 32767 (smaller runs first) or a
#: name, so that a type checker refuses a misspelt name such as ``"urgent"``. Exported as
#: ``pgqueue.Priority`` for annotating a variable passed on.
Priority: TypeAlias = int | PriorityName
PRIORITIES: dict[str, int] = {"critical": 0, "high": 25, "normal": 100, "low": 200}
DEFAULT_PRIORITY = 100
DEFAULT_MAX_ATTEMPTS = 20
DEFAULT_QUEUE = "default"


def resolve_priority(priority: int | str | None, default: int = DEFAULT_PRIORITY) -> int:
    """Turn an int or one of critical/high/normal/low into the stored integer (smaller runs first)."""
    if priority is None:
        return default
    if isinstance(priority, bool):
        raise InvalidPriority(f"priority {priority!r} must be an integer or one of {', '.join(PRIORITIES)}")
    if isinstance(priority, int):
        if not -32768 <= priority <= 32767:
            raise InvalidPriority(f"priority {priority} must be between -32768 and 32767")
        return priority
    if isinstance(priority, str):
        name = priority.strip().lower()
        if name in PRIORITIES:
            return PRIORITIES[name]
        try:
            return resolve_priority(int(name), default)
        except ValueError:
            pass
    raise InvalidPriority(f"priority {priority!r} must be an integer or one of {', '.join(PRIORITIES)}")


@dataclass(frozen=True)
class EnqueueOptions:
    """Per-call enqueue options (see :meth:`Task.options`); ``None`` means "the task's default"."""

    queue: str | None = None
    priority: Priority | None = None
    delay: float | timedelta | None = None
    run_at: datetime | None = None
    max_attempts: int | None = None
    unique_key: str | None = None
    tags: tuple[str, ...] | None = None
    encrypt: bool | None = None
    group: str | None = None
    depends_on: tuple[int, ...] | None = None

    def merged(self, other: EnqueueOptions) -> EnqueueOptions:
        """These options with every option ``other`` sets taking its place."""
        changes = {name: value for name, value in vars(other).items() if value is not None}
        return replace(self, **changes)

    def as_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`pgqueue.App.enqueue` these options set."""
        kwargs: dict[str, Any] = {name: value for name, value in vars(self).items() if value is not None}
        return kwargs


def _options(queue: str | None, priority: Priority | None, delay: float | timedelta | None,
             run_at: datetime | None, max_attempts: int | None, unique_key: str | None,
             tags: Iterable[str] | None, encrypt: bool | None, group: str | None,
             depends_on: Iterable[int] | None) -> EnqueueOptions:
    if isinstance(tags, str):
        raise InvalidEnqueueOption("tags must be a list of strings, not a single string")
    return EnqueueOptions(
        queue=queue, priority=priority, delay=delay, run_at=run_at, max_attempts=max_attempts,
        unique_key=unique_key, tags=tuple(tags) if tags is not None else None, encrypt=encrypt, group=group,
        depends_on=tuple(depends_on) if depends_on is not None else None,
    )


@dataclass(eq=False)
class Task(Generic[P, R]):
    """A handler registered with :meth:`pgqueue.App.task`.

    ``Task[P, R]`` is generic over the handler's parameters after the ``job`` (``P``) and its return
    type (``R``): :meth:`enqueue` takes exactly the handler's other arguments, which a type checker
    verifies and pgqueue checks again at enqueue time. Calling the task runs the handler directly
    (handy in tests).

    Example:
        >>> @app.task(name="send-email", queue="emails")
        ... def send_email(job: pgqueue.Job, to: str, subject: str) -> None: ...
        >>> send_email.enqueue(conn, to="a@example.com", subject="hi")
        >>> send_email.options(priority="high", delay=60).enqueue(conn, "a@example.com", subject="hi")
    """

    app: App
    fn: Callable[Concatenate[Job, P], R]
    name: str
    queue: str = DEFAULT_QUEUE
    priority: int = DEFAULT_PRIORITY
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float | None = None
    backoff: Backoff = DEFAULT_BACKOFF
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    discard_on: tuple[type[BaseException], ...] = ()
    transactional: bool = False
    encrypt: bool = False
    tags: tuple[str, ...] = ()
    circuit_breaker: CircuitBreaker | None = None
    #: Flow limits enforced by the database across workers (see ``pgqueue.task_limits``).
    concurrency: int | None = None
    rate_limit: int | None = None
    rate_period_seconds: int | None = None
    group_concurrency: int | None = None
    is_async: bool = field(init=False)
    _signature: inspect.Signature | None = field(init=False, repr=False)
    # For keyword-only calls, the common case: (names accepted, names required, takes **kwargs,
    # the name of the job's parameter unless it is positional-only).
    _keywords: tuple[frozenset[str], frozenset[str], bool, frozenset[str]] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.is_async = inspect.iscoroutinefunction(self.fn)
        try:
            self._signature = inspect.signature(self.fn)
        except (TypeError, ValueError):  # some builtins and C callables have none
            self._signature = None
        self._keywords = None
        every = list(self._signature.parameters.values()) if self._signature is not None else []
        params = every[1:]
        if every and not any(p.kind is p.POSITIONAL_ONLY for p in params):
            named = frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
            required = frozenset(p.name for p in params if p.name in named and p.default is p.empty)
            job = frozenset() if every[0].kind is every[0].POSITIONAL_ONLY else frozenset({every[0].name})
            self._keywords = (named, required, any(p.kind is p.VAR_KEYWORD for p in params), job)

    def check_args(self, job: Any, args: dict[str, Any]) -> None:
        """Raise TypeError when ``args`` do not fit the handler's signature (checked before it runs)."""
        if self._signature is None:
            return
        if self._keywords is not None:
            # The same set arithmetic as job_args: Signature.bind costs more than the no-op job itself.
            named, required, takes_any, job_param = self._keywords
            given = args.keys()
            if required <= given and (takes_any or given <= named) and not (job_param & given):
                return
        try:
            self._signature.bind(job, **args)
        except TypeError:
            raise TypeError(self._mismatch(args)) from None

    def _mismatch(self, args: dict[str, Any]) -> str:
        assert self._signature is not None  # noqa: S101 - only called after a failed bind
        params = list(self._signature.parameters.values())[1:]  # the first one receives the Job
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        required = {n for n in named if self._signature.parameters[n].default is inspect.Parameter.empty}
        unexpected = sorted(set(args) - named) if not takes_any else []
        missing = sorted(required - set(args))
        parts = [f"unexpected {', '.join(map(repr, unexpected))}" if unexpected else "",
                 f"missing {', '.join(map(repr, missing))}" if missing else ""]
        first = next(iter(self._signature.parameters.values()), None)
        if first is not None and first.name in unexpected and first.kind is not first.POSITIONAL_ONLY:
            parts[0] += f" (the handler's first parameter, {first.name!r}, receives the pgqueue.Job)"
        return "; ".join(p for p in parts if p) or _GENERIC_MISMATCH

    @property
    def limited(self) -> bool:
        """Whether the task declares a concurrency, rate or group limit."""
        return self.concurrency is not None or self.rate_limit is not None or self.group_concurrency is not None

    @property
    def rate(self) -> str | None:
        """The rate limit as written (``"100/m"``), or None."""
        if self.rate_limit is None or self.rate_period_seconds is None:
            return None
        from pgqueue.admin import format_rate

        return format_rate(self.rate_limit, self.rate_period_seconds)

    def job_args(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The stored args (a JSON object) for a call of the handler with ``args`` and ``kwargs``.

        Positional arguments are stored under their parameter names, since the worker calls the
        handler with keyword arguments.

        Raises:
            pgqueue.errors.InvalidArgs: the arguments do not fit the handler's signature.
        """
        if self._signature is None:
            if args:
                raise InvalidArgs(f"task {self.name!r}: its handler's signature is unknown; pass keyword arguments")
            return kwargs
        if not args and self._keywords is not None:
            # Set arithmetic instead of Signature.bind (about 4 us per enqueue): same verdict.
            named, required, takes_any, job = self._keywords
            given = kwargs.keys()
            if required <= given and (takes_any or given <= named) and not (job & given):
                return kwargs
        try:
            bound = self._signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            # Names the unexpected and missing arguments when that is the problem, else Python's words.
            detail = self._mismatch(kwargs) if not args else _GENERIC_MISMATCH
            detail = str(exc) if detail == _GENERIC_MISMATCH else detail
            raise InvalidArgs(f"args do not fit task {self.name!r}: {detail}") from None
        stored: dict[str, Any] = {}
        for index, (name, value) in enumerate(bound.arguments.items()):
            if index == 0:
                continue  # the job
            kind = self._signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    raise InvalidArgs(f"args do not fit task {self.name!r}: its *{name} cannot be stored "
                                      "as a job's args (a JSON object); pass keyword arguments")
            elif kind is inspect.Parameter.VAR_KEYWORD:
                stored.update(value)
            elif kind is inspect.Parameter.POSITIONAL_ONLY:
                raise InvalidArgs(f"args do not fit task {self.name!r}: its positional-only parameter "
                                  f"{name!r} cannot be passed by name by the worker")
            else:
                stored[name] = value
        return stored

    def __call__(self, job: Job, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(job, *args, **kwargs)

    def options(self, *, queue: str | None = None, priority: Priority | None = None,
                delay: float | timedelta | None = None, run_at: datetime | None = None,
                max_attempts: int | None = None, unique_key: str | None = None,
                tags: Sequence[str] | None = None, encrypt: bool | None = None, group: str | None = None,
                depends_on: Iterable[int] | None = None) -> BoundTask[P, R]:
        """This task with per-call enqueue options bound: an immutable variant whose ``enqueue``
        takes the handler's arguments only. Options are validated when the job is enqueued.

        Args:
            queue, priority, max_attempts: override the task's defaults for these jobs.
            delay: seconds (or timedelta) before the job becomes available.
            run_at: aware datetime at which the job becomes available.
            unique_key: while a job with this key is live, return its id instead of inserting.
            tags: plaintext labels (never PHI); replace the task's default tags.
            encrypt: True stores the args (and result and error text) only as ciphertext.
            group: the job's concurrency group (needs an App.enqueue that supports groups).
            depends_on: ids of jobs this one waits for (needs an App.enqueue that supports them).

        Example:
            >>> send_email.options(priority="high", delay=60).enqueue(conn, to="a@x", subject="hi")
        """
        bound = _options(queue, priority, delay, run_at, max_attempts, unique_key, tags, encrypt, group, depends_on)
        return BoundTask(self, bound)

    def enqueue(self, conn: Connection | None, /, *args: P.args, **kwargs: P.kwargs) -> int:
        """Enqueue this task with the handler's arguments on ``conn``, inside the caller's
        transaction (see :meth:`pgqueue.App.enqueue`); per-call options go through :meth:`options`.

        Returns:
            The job id.

        Raises:
            pgqueue.errors.InvalidArgs: the arguments do not fit the handler (nothing written).
            pgqueue.errors.EnqueueError: the args are not JSON-serialisable, too large, ...

        Example:
            >>> with psycopg.connect(dsn) as conn:
            ...     job_id = send_email.enqueue(conn, to="a@example.com", subject="hi")
        """
        return self.app.enqueue(conn, self.name, self.job_args(*args, **kwargs))

    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        """A signature of this task with the handler's arguments, for :func:`pgqueue.chain` and
        :func:`pgqueue.group`. A type checker checks them against the handler, as for :meth:`enqueue`,
        and pgqueue checks them again here (positional ones are stored under their names).

        Raises:
            pgqueue.errors.InvalidArgs: the arguments do not fit the handler.

        Example:
            >>> app.enqueue_workflow(conn, pgqueue.chain(render.s(report_id=1), email.s(to="a@example.com")))
        """
        from pgqueue.workflows import Signature

        return Signature(self.name, self.job_args(*args, **kwargs))

    async def enqueue_async(self, conn: AsyncConnection | None, /, *args: P.args, **kwargs: P.kwargs) -> int:
        """Async twin of :meth:`enqueue` for psycopg AsyncConnection or SQLAlchemy async objects
        (``conn=None``: on a connection of pgqueue's own, committed at once)."""
        return await self.app.enqueue_async(conn, self.name, self.job_args(*args, **kwargs))


@dataclass(frozen=True)
class BoundTask(Generic[P, R]):
    """A task with per-call enqueue options bound (from :meth:`Task.options`); immutable.

    Example:
        >>> urgent = send_email.options(priority="critical")
        >>> urgent.enqueue(conn, to="a@example.com", subject="hi")
        >>> urgent.options(delay=30).enqueue(conn, to="b@example.com", subject="hi")  # both options
    """

    task: Task[P, R]
    bound: EnqueueOptions

    def options(self, *, queue: str | None = None, priority: Priority | None = None,
                delay: float | timedelta | None = None, run_at: datetime | None = None,
                max_attempts: int | None = None, unique_key: str | None = None,
                tags: Sequence[str] | None = None, encrypt: bool | None = None, group: str | None = None,
                depends_on: Iterable[int] | None = None) -> BoundTask[P, R]:
        """A new variant with these options set on top of the bound ones (see :meth:`Task.options`)."""
        more = _options(queue, priority, delay, run_at, max_attempts, unique_key, tags, encrypt, group, depends_on)
        return BoundTask(self.task, self.bound.merged(more))

    def enqueue(self, conn: Connection | None, /, *args: P.args, **kwargs: P.kwargs) -> int:
        """Enqueue the task with the bound options (see :meth:`Task.enqueue`)."""
        job_args = self.task.job_args(*args, **kwargs)
        return self.task.app.enqueue(conn, self.task.name, job_args, **self.bound.as_kwargs())

    async def enqueue_async(self, conn: AsyncConnection | None, /, *args: P.args, **kwargs: P.kwargs) -> int:
        """Async twin of :meth:`enqueue` (``conn=None`` as there)."""
        job_args = self.task.job_args(*args, **kwargs)
        options = self.bound.as_kwargs()
        return await self.task.app.enqueue_async(conn, self.task.name, job_args, **options)
