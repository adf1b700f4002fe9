"""OpenTelemetry tracing for pgqueue (``pip install 'pgqueue[otel]'``).

After :func:`instrument`, every job attempt runs in a span (``pgqueue.job <task>``, kind
CONSUMER) with the attributes ``messaging.system`` = ``pgqueue``, ``pgqueue.queue``,
``pgqueue.task``, ``pgqueue.job_id``, ``pgqueue.attempt``, ``pgqueue.outcome`` (``completed``,
``retry``, ``failed``, ``discarded``, ``snoozed``, ``cancelled``) and ``error.type`` when it
failed. The handler's own spans are its children. The span is linked to the span that was current when the job was
enqueued: enqueueing stores that trace context with the job (in its args under
``_pgqueue_trace``, which the worker removes before calling the handler), only when a span is
being recorded.

Instrument the App in every process: the enqueuer's to store the context, the worker's to make
spans. Without it nothing is stored and no span made.

Example:
    >>> import pgqueue.contrib.otel
    >>> pgqueue.contrib.otel.instrument(app)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from pgqueue._tracing import JobSpan, Tracing

if TYPE_CHECKING:
    from pgqueue.app import App
    from pgqueue.jobs import Job

_SCOPE = "pgqueue"
# A snooze asks to run later and an operator's cancel ends the job on purpose: neither failed.
_NOT_ERRORS = frozenset({"completed", "snoozed", "cancelled"})


class _Span:
    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set_outcome(self, outcome: str, error_type: str | None = None) -> None:
        self._span.set_attribute("pgqueue.outcome", outcome)
        if error_type is not None:
            self._span.set_attribute("error.type", error_type)
        if outcome not in _NOT_ERRORS:
            self._span.set_status(Status(StatusCode.ERROR, error_type))


class OpenTelemetryTracing:
    """The :class:`pgqueue._tracing.Tracing` of OpenTelemetry (see :func:`instrument`)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)

    def carrier(self) -> dict[str, str] | None:
        if not trace.get_current_span().get_span_context().is_valid:
            return None
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier or None

    def job_span(self, job: Job, carrier: dict[str, str] | None) -> AbstractContextManager[JobSpan]:
        return self._job_span(job, carrier)

    @contextmanager
    def _job_span(self, job: Job, carrier: dict[str, str] | None) -> Iterator[JobSpan]:
        links = []
        if carrier:
            enqueued_by = trace.get_current_span(propagate.extract(carrier)).get_span_context()
            if enqueued_by.is_valid:
                links.append(Link(enqueued_by))
        attributes: dict[str, str | int] = {
            "messaging.system": "pgqueue", "pgqueue.queue": job.queue, "pgqueue.task": job.task,
            "pgqueue.job_id": job.id, "pgqueue.attempt": job.attempt,
        }
        # A root span of its own, linked (not parented) to the enqueuer: a job may run much later,
        # and many times, and should not stretch the request's trace.
        with self._tracer.start_as_current_span(
                f"pgqueue.job {job.task}", context=trace.set_span_in_context(trace.INVALID_SPAN),
                kind=SpanKind.CONSUMER, links=links, attributes=attributes,
                record_exception=False, set_status_on_exception=False) as span:
            yield _Span(span)


def instrument(app: App, *, tracer_provider: trace.TracerProvider | None = None) -> Tracing:
    """Trace ``app``'s jobs with OpenTelemetry (the global tracer provider unless one is given).

    Example:
        >>> pgqueue.contrib.otel.instrument(app)
    """
    tracing = OpenTelemetryTracing(tracer_provider)
    app.tracing = tracing
    return tracing
