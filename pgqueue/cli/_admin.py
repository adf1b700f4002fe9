"""What the operator commands share: who is acting, parsing ids and states, a store on a fresh connection."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from pgqueue._db.errors import translate_errors
from pgqueue._db.sessions import connect
from pgqueue._humanize import whole_number
from pgqueue.admin import default_actor
from pgqueue.cli._context import fail, resolve, usage_error
from pgqueue.jobs import JobState

if TYPE_CHECKING:
    from pgqueue._db.types import PsycopgConnection

S = TypeVar("S")

_MAX_BIGINT = 2**63 - 1


#: The ``source`` of actions taken from this CLI (in their audit row's detail).
SOURCE = "cli"


def actor() -> str:
    """The ``actor`` written to ``pgqueue.job_events`` for actions taken from this CLI: the OS user
    (with ``source`` :data:`SOURCE` in the row's detail for :mod:`pgqueue.admin` actions)."""
    return default_actor()


def parse_job_id(raw: str) -> int:
    """A job id as typed by an operator; anything else is a one-line error."""
    job_id = whole_number(raw.strip().lstrip("#"))
    if job_id is None or not 1 <= job_id <= _MAX_BIGINT:
        fail(f"job id {raw!r} must be a positive integer")
    return job_id


def parse_state(raw: str | None, allowed: Iterable[str] = tuple(JobState)) -> str | None:
    """A ``--state`` value, checked against the contract's job states (or a subset of them)."""
    if raw is None:
        return None
    state = raw.strip().lower()
    valid = [str(s) for s in allowed]
    if state not in valid:
        usage_error(f"state {raw!r} is not valid here; valid states: {', '.join(valid)}")
    return state


@contextmanager
def open_session(dsn: str | None) -> Iterator[PsycopgConnection]:
    """A new connection, committed when the block succeeds, else rolled back."""
    target = resolve(dsn)
    with translate_errors(), connect(target) as conn:
        yield conn


@contextmanager
def open_store(dsn: str | None, store: Callable[[PsycopgConnection], S]) -> Iterator[S]:
    """A store (``JobStore``, ``QueueStore``...) on :func:`open_session`'s connection."""
    with open_session(dsn) as conn:
        yield store(conn)
