"""Run a worker with `pgqueue worker --app otelshop.tasks:app` after configuring OpenTelemetry
(e.g. `opentelemetry-instrument` or a TracerProvider with an OTLP exporter)."""

from opentelemetry import trace

import pgqueue
import pgqueue.contrib.otel

app = pgqueue.App()
pgqueue.contrib.otel.instrument(app)  # in the web process and in the workers
tracer = trace.get_tracer("otelshop")


@app.task(name="resize-image", max_attempts=2, backoff=pgqueue.Backoff.fixed(0))
def resize_image(job: pgqueue.Job, image_id: int, width: int) -> dict[str, int]:
    with tracer.start_as_current_span("resize"):  # a child of the job's span
        if width <= 0:
            raise ValueError(f"width {width} must be positive")
        return {"image_id": image_id, "width": width}


def upload(conn, image_id: int) -> int:
    """What a request handler does: its span is the one the job's span links to."""
    with tracer.start_as_current_span("POST /images"):
        return resize_image.enqueue(conn, image_id=image_id, width=640)
