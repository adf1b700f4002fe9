"""Tasks: a registered handler with its defaults (queue, priority, retries, timeout)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgqueue.backoff import DEFAULT_BACKOFF, Backoff
from pgqueue.errors import InvalidPriority

if TYPE_CHECKING:
    from pgqueue.app import App
    from pgqueue.typing import AsyncConnection, Connection
    from pgqueue.workflows import Signature

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


@dataclass
class Task:
    """A handler registered with :meth:`pgqueue.App.task`.

    Calling the task runs the handler directly (handy in tests); :meth:`enqueue` puts a job on
    the queue inside the caller's transaction.
    """

    app: App
    fn: Callable[..., Any]
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
    is_async: bool = field(init=False)
    _signature: inspect.Signature | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.is_async = inspect.iscoroutinefunction(self.fn)
        try:
            self._signature = inspect.signature(self.fn)
        except (TypeError, ValueError):  # some builtins and C callables have none
            self._signature = None

    def check_args(self, job: Any, args: dict[str, Any]) -> None:
        """Raise TypeError when ``args`` do not fit the handler's signature (checked before it runs)."""
        if self._signature is None:
            return
        try:
            self._signature.bind(job, **args)
        except TypeError:
            params = list(self._signature.parameters.values())[1:]  # the first one receives the Job
            takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
            named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
            required = {n for n in named if self._signature.parameters[n].default is inspect.Parameter.empty}
            unexpected = sorted(set(args) - named) if not takes_any else []
            missing = sorted(required - set(args))
            parts = [f"unexpected {', '.join(map(repr, unexpected))}" if unexpected else "",
                     f"missing {', '.join(map(repr, missing))}" if missing else ""]
            raise TypeError("; ".join(p for p in parts if p) or "args do not match the signature") from None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def enqueue(self, conn: Connection | None, /, **args: Any) -> int:
        """Enqueue this task with ``args`` on ``conn`` (see :meth:`pgqueue.App.enqueue`).

        Example:
            >>> with psycopg.connect(dsn) as conn:
            ...     job_id = send_email.enqueue(conn, to="a@example.com", subject="hi")
        """
        return self.app.enqueue(conn, self.name, args)

    def s(self, **args: Any) -> Signature:
        """A signature of this task with ``args``, for :func:`pgqueue.chain` and :func:`pgqueue.group`.

        Example:
            >>> app.enqueue_workflow(conn, pgqueue.chain(render.s(report_id=1), email.s(to="a@example.com")))
        """
        from pgqueue.workflows import Signature

        return Signature(self.name, args)

    async def enqueue_async(self, conn: AsyncConnection, /, **args: Any) -> int:
        """Async twin of :meth:`enqueue` for psycopg AsyncConnection or SQLAlchemy async objects."""
        return await self.app.enqueue_async(conn, self.name, args)
