"""The seam tracing integrations plug into (``pgqueue.contrib.otel``), with no tracing library
imported here: an App without one pays a ``None`` check per enqueue and a key lookup per job.

The enqueuing side's trace context travels with the job in its args, under :data:`TRACE_KEY`
(a W3C ``traceparent``/``tracestate`` carrier, in plaintext unless the job is encrypted); every
worker removes that key before the args reach the handler, instrumented or not.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pgqueue.jobs import Job

#: The args key holding the enqueuer's trace context; never passed to a handler.
TRACE_KEY = "_pgqueue_trace"


class JobSpan(Protocol):
    def set_outcome(self, outcome: str, error_type: str | None = None) -> None: ...


class Tracing(Protocol):
    """What ``App.tracing`` holds when an integration is installed."""

    def carrier(self) -> dict[str, str] | None:
        """The current trace context to store with a job being enqueued (None: nothing to link)."""

    def job_span(self, job: Job, carrier: dict[str, str] | None) -> AbstractContextManager[JobSpan]:
        """A span around one attempt of ``job``, linked to the context in ``carrier``."""


def with_carrier(tracing: Tracing | None, args: Any) -> Any:
    """``args`` with the current trace context added, when there is one to add."""
    if tracing is None or not isinstance(args, dict):
        return args
    carrier = tracing.carrier()
    return {**args, TRACE_KEY: carrier} if carrier else args


def take_carrier(job: Job) -> dict[str, str] | None:
    """Remove the trace context from ``job.args`` (the handler never sees it) and return it."""
    if TRACE_KEY not in job.args:
        return None
    carrier = job.args.pop(TRACE_KEY)
    return carrier if isinstance(carrier, dict) else None
