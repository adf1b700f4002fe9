"""Workflows: chains and groups of jobs built on job dependencies.

A :class:`Signature` is a job not enqueued yet (a task, its args, per-job options). :func:`chain`
runs signatures one after another; :func:`group` runs them side by side and, optionally, a
callback once all of them completed. Chains and groups nest. :meth:`pgqueue.App.enqueue_workflow`
writes a whole workflow in one statement on the caller's transaction; every job of it carries the
same ``workflow_id``.

Example:
    >>> flow = pgqueue.chain(
    ...     pgqueue.group([export.s(facility=f) for f in facilities], then=zip_exports.s()),
    ...     email.s(to="ops@example.com"),
    ... )
    >>> wf = app.enqueue_workflow(conn, flow)
    >>> wf.id, wf.job_ids
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Union

from pgqueue.jobs import JobSpec
from pgqueue.tasks import Priority

if TYPE_CHECKING:
    from pgqueue.tasks import Task

#: What a dependent does when one of its dependencies fails for good (failed, cancelled, deleted).
DEPENDENCY_POLICIES = ("cancel", "run")


@dataclass(frozen=True)
class Signature:
    """A job to enqueue as a step of a workflow: :func:`sig` or ``task.s(...)`` build one.

    Attributes:
        task: the task name.
        args: the handler's keyword arguments.
        queue, priority, delay, run_at, max_attempts, tags, encrypt: as for :meth:`pgqueue.App.enqueue`.
        on_dependency_failure: ``"cancel"`` (default: the job and its own dependents end cancelled
            when a job before it fails for good) or ``"run"`` (it runs anyway).
    """

    task: str
    args: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    priority: Priority | None = None
    delay: float | timedelta | None = None
    run_at: datetime | None = None
    max_attempts: int | None = None
    tags: Sequence[str] | None = None
    encrypt: bool | None = None
    on_dependency_failure: str | None = None


@dataclass(frozen=True)
class Chain:
    """Steps that run one after another: each starts once the step before it completed."""

    steps: tuple[Flow, ...]


@dataclass(frozen=True)
class Group:
    """Members that run side by side, and an optional callback once all of them completed."""

    members: tuple[Flow, ...]
    then: Flow | None = None


Flow = Union[Signature, Chain, Group]  # noqa: UP007 -- a runtime alias of forward references


@dataclass(frozen=True)
class Workflow:
    """What :meth:`pgqueue.App.enqueue_workflow` returns: the workflow's id and its jobs' ids, in
    the order the workflow lists its signatures."""

    id: str
    job_ids: list[int]


def sig(task: str | Task[..., Any], args: Mapping[str, Any] | None = None, **options: Any) -> Signature:
    """A signature: ``task`` (a name or a registered :class:`pgqueue.tasks.Task`) with ``args``.

    Options are those of :class:`Signature` (queue, priority, delay, run_at, max_attempts, tags,
    encrypt, on_dependency_failure).

    Example:
        >>> pgqueue.sig("send-email", {"to": "a@example.com"}, queue="emails")
    """
    name = task if isinstance(task, str) else task.name
    return Signature(name, dict(args or {}), **options)


def chain(*steps: Flow) -> Chain:
    """Run ``steps`` in order: step n+1 becomes available in the transaction that completes step n.

    Example:
        >>> app.enqueue_workflow(conn, pgqueue.chain(render.s(report_id=1), email.s(to="a@example.com")))
    """
    if not steps:
        raise ValueError("a chain needs at least one step")
    return Chain(tuple(steps))


def group(members: Iterable[Flow], then: Flow | None = None) -> Group:
    """Run ``members`` side by side; ``then`` (optional) runs once every member completed.

    Example:
        >>> app.enqueue_workflow(conn, pgqueue.group([export.s(facility=f) for f in ids], then=zip_all.s()))
    """
    items = tuple(members)
    if not items:
        raise ValueError("a group needs at least one member")
    return Group(items, then)


def compile_flow(flow: Flow) -> list[JobSpec]:
    """The job specs of ``flow``, each depending (by object) on the specs that must complete first."""
    specs: list[JobSpec] = []

    def build(node: Flow, after: list[JobSpec]) -> list[JobSpec]:
        if isinstance(node, Signature):
            spec = JobSpec(node.task, node.args, queue=node.queue, priority=node.priority, delay=node.delay,
                           run_at=node.run_at, max_attempts=node.max_attempts, tags=node.tags,
                           encrypt=node.encrypt, depends_on=tuple(after),
                           on_dependency_failure=node.on_dependency_failure)
            specs.append(spec)
            return [spec]
        if isinstance(node, Chain):
            tails = after
            for step in node.steps:
                tails = build(step, tails)
            return tails
        if isinstance(node, Group):
            tails = [tail for member in node.members for tail in build(member, after)]
            return build(node.then, tails) if node.then is not None else tails
        raise TypeError(f"{node!r} is not a signature, chain or group")

    build(flow, [])
    return specs


def new_workflow_id() -> str:
    return str(uuid.uuid4())
