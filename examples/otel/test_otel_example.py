"""The OpenTelemetry integration: one span per job attempt with queue/task/attempt/outcome,
linked to the span that enqueued it through the trace context stored with the job."""

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from pgqueue.testing import TestDatabase


@pytest.fixture(scope="session")
def exporter() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # once per process: the example's tasks use the global one
    return exporter


@pytest.fixture
def spans(exporter: InMemorySpanExporter, pgqueue_db: TestDatabase) -> InMemorySpanExporter:
    from otelshop.tasks import app

    pgqueue_db.bind(app)
    exporter.clear()
    return exporter


def _by_name(exporter: InMemorySpanExporter, name: str) -> list:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def test_a_jobs_span_carries_its_attributes_and_links_to_the_enqueuing_span(
        spans: InMemorySpanExporter, pgqueue_db: TestDatabase) -> None:
    from otelshop.tasks import app, upload

    with pgqueue_db.connect() as conn:
        job_id = upload(conn, image_id=7)
    [job] = pgqueue_db.assert_enqueued("resize-image")
    assert set(job.args or {}) == {"image_id", "width", "_pgqueue_trace"}
    assert pgqueue_db.drain(app).completed == 1

    [request] = _by_name(spans, "POST /images")
    [run] = _by_name(spans, "pgqueue.job resize-image")
    [resize] = _by_name(spans, "resize")
    assert run.kind is SpanKind.CONSUMER
    assert dict(run.attributes) == {
        "messaging.system": "pgqueue", "pgqueue.queue": "default", "pgqueue.task": "resize-image",
        "pgqueue.job_id": job_id, "pgqueue.attempt": 1, "pgqueue.outcome": "completed"}
    assert [link.context.span_id for link in run.links] == [request.context.span_id]
    assert run.parent is None  # its own trace, linked to the request's
    assert resize.parent.span_id == run.context.span_id  # the handler's spans are its children
    assert app.result(None, job_id, timeout=5) == {"image_id": 7, "width": 640}  # args reached it clean


def test_failed_attempts_record_their_outcome_and_error_type(spans: InMemorySpanExporter,
                                                            pgqueue_db: TestDatabase) -> None:
    from otelshop.tasks import app, resize_image

    resize_image.enqueue(None, image_id=1, width=0)  # no current span: nothing to link
    [job] = pgqueue_db.assert_enqueued("resize-image")
    assert "_pgqueue_trace" not in (job.args or {})
    assert pgqueue_db.drain(app).failed == 1

    attempts = sorted(_by_name(spans, "pgqueue.job resize-image"), key=lambda span: span.attributes["pgqueue.attempt"])
    assert [(s.attributes["pgqueue.attempt"], s.attributes["pgqueue.outcome"], s.attributes["error.type"])
            for s in attempts] == [(1, "retry", "ValueError"), (2, "failed", "ValueError")]
    assert all(s.status.status_code is StatusCode.ERROR and not s.links for s in attempts)
