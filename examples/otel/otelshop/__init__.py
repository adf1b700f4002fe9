"""OpenTelemetry with pgqueue: a job's span is linked to the span of the request that enqueued it."""
