"""The OpenAPI 3.1 description of the JSON API, served at /api/openapi.json (built once)."""

from __future__ import annotations

from functools import cache
from typing import Any

from pgqueue import __version__

_STATES = ["waiting", "scheduled", "available", "running", "completed", "failed", "cancelled"]
_ERROR = {"$ref": "#/components/responses/Error"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _items(name: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"items": {"type": "array", "items": _ref(name)}}, "required": ["items"]}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _ERROR for code in (401, 403, *codes, 503)}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
_QUEUE = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[a-z0-9_-]{1,63}$"}}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}


def _action(summary: str, result: str, *codes: int, body: dict[str, Any] | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "security": [{"bearer": []}],
                                 "responses": {"200": _ok(_ref(result)), **_errors(*codes)}}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return operation


@cache
def openapi_document() -> dict[str, Any]:
    job_properties = {
        "id": {"type": "integer"}, "task": {"type": "string"}, "queue": {"type": "string"},
        "state": {"enum": _STATES}, "priority": {"type": "integer"},
        "args": {"type": ["object", "null"], "description": "null when encrypted"},
        "attempt": {"type": "integer"}, "max_attempts": {"type": "integer"},
        "run_at": {"type": "string", "format": "date-time"}, "enqueued_at": {"type": "string", "format": "date-time"},
        "started_at": _NULLABLE_TIME, "finished_at": _NULLABLE_TIME,
        "progress": {"type": ["number", "null"]},
        "progress_note": {"type": ["string", "null"], "description": "null when encrypted"},
        "result": {"description": "the handler's return value; null when encrypted"},
        "last_error": {"type": ["object", "null"],
                       "description": "type, message, traceback (only type when encrypted)"},
        "unique_key": {"type": ["string", "null"]}, "tags": {"type": "array", "items": {"type": "string"}},
        "worker_id": {"type": ["string", "null"]}, "args_encrypted": {"type": "boolean"},
        "result_encrypted": {"type": "boolean"}, "error_encrypted": {"type": "boolean"},
        "group_key": {"type": ["string", "null"], "description": "the group it was enqueued in, if any"},
        "progress_note_encrypted": {"type": "boolean",
                                    "description": "the progress note exists only as ciphertext"},
    }
    counts = {name: {"type": "integer"} for name in
              ("waiting", "scheduled", "available", "running", "failed", "cancelled", "completed_last_hour",
               "failed_last_hour")}
    schemas: dict[str, Any] = {
        "Job": {"type": "object", "properties": job_properties, "required": list(job_properties)},
        "JobEvent": {"type": "object", "properties": {
            "id": {"type": "integer"}, "job_id": {"type": ["integer", "null"]},
            "at": {"type": "string", "format": "date-time"}, "event": {"type": "string"},
            "from_state": {"type": ["string", "null"]}, "to_state": {"type": ["string", "null"]},
            "attempt": {"type": ["integer", "null"]}, "worker_id": {"type": ["string", "null"]},
            "actor": {"type": ["string", "null"]}, "detail": {}, "seal_no": {"type": ["integer", "null"]}}},
        "JobWithEvents": {"allOf": [_ref("Job"), {"type": "object", "properties": {
            "events": {"type": "array", "items": _ref("JobEvent")}}}]},
        "JobPage": {"type": "object", "properties": {
            "items": {"type": "array", "items": _ref("Job")},
            "next_cursor": {"type": ["string", "null"], "description": "pass as cursor for the next page"},
            "scanned": {"type": "integer", "description": "jobs examined for this page"}}},
        "JobChange": {"type": "object", "properties": {
            "id": {"type": "integer"}, "previous_state": {"enum": _STATES},
            "state": {"type": ["string", "null"], "description": "null: deleted"}}},
        "Queue": {"type": "object", "properties": {
            "name": {"type": "string"}, "paused": {"type": "boolean"},
            "concurrency": {"type": ["integer", "null"]}, "rate": {"type": ["string", "null"], "examples": ["20/s"]},
            "rate_limit": {"type": ["integer", "null"]}, "rate_period_seconds": {"type": ["integer", "null"]},
            **counts, "lag_seconds": {"type": ["number", "null"]},
            "starts_in_window": {"type": ["integer", "null"],
                                 "description": "starts in the rate window now (null without a rate limit)"}}},
        "Schedule": {"type": "object", "properties": {
            "name": {"type": "string"}, "cron": {"type": "string"}, "timezone": {"type": "string"},
            "task": {"type": "string"}, "queue": {"type": "string"}, "paused": {"type": "boolean"},
            "state": {"enum": ["active", "paused", "disabled"]}, "next_run_at": _NULLABLE_TIME,
            "last_run_at": _NULLABLE_TIME}},
        "Worker": {"type": "object", "properties": {
            "id": {"type": "string"}, "hostname": {"type": "string"}, "pid": {"type": "integer"},
            "queues": {"type": "array", "items": {"type": "string"}}, "concurrency": {"type": "integer"},
            "started_at": {"type": "string", "format": "date-time"},
            "heartbeat_at": {"type": "string", "format": "date-time"},
            "lease_expires_at": {"type": "string", "format": "date-time"}, "alive": {"type": "boolean"}}},
        "Breaker": {"type": "object", "properties": {
            "task": {"type": "string"}, "state": {"enum": ["closed", "open", "half_open"]},
            "failures": {"type": "integer"}, "failure_threshold": {"type": "integer"},
            "window_seconds": {"type": "number"}, "cooldown_seconds": {"type": "number"},
            "opened_at": _NULLABLE_TIME, "trial_at": _NULLABLE_TIME,
            "trial_job_id": {"type": ["integer", "null"]}, "updated_at": {"type": "string", "format": "date-time"}}},
        "Health": {"type": "object", "properties": {
            "healthy": {"type": "boolean"}, "checks": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "status": {"enum": ["ok", "warn", "fail", "skipped"]},
                "detail": {"type": "string"}}}}}},
        "Error": {"type": "object", "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
                  "required": ["error", "status"]},
    }
    paths: dict[str, Any] = {
        "/healthz": {"get": {"summary": "The process is up", "security": [],
                             "responses": {"200": {"description": "up"}}}},
        "/readyz": {"get": {"summary": "The database answers and the schema is current", "security": [],
                            "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (text format)",
                             "responses": {"200": {"description": "text/plain exposition"}, **_errors()}}},
        "/api/queues": {"get": {"summary": "Queues: settings, counts, lag", "responses": {
            "200": _ok(_items("Queue")), **_errors()}}},
        "/api/queues/{name}/pause": {"post": _action("Pause a queue", "Queue", 400, 404) | {"parameters": [_QUEUE]}},
        "/api/queues/{name}/resume": {"post": _action("Resume a queue", "Queue", 400, 404)
                                      | {"parameters": [_QUEUE]}},
        "/api/queues/{name}/purge": {"post": _action(
            "Delete a queue's jobs (all but running, or one state)", "Queue", 400, 404, 409, 415,
            body={"type": "object", "properties": {"state": {"enum": [s for s in _STATES if s != "running"]}}})
            | {"parameters": [_QUEUE]}},
        "/api/queues/{name}/limits": {"put": _action(
            "Set a queue's concurrency and rate limits (null removes; omitted keeps)", "Queue", 400, 404, 415,
            body={"type": "object", "properties": {
                "concurrency": {"type": ["integer", "null"], "minimum": 1},
                "rate": {"type": ["string", "null"], "examples": ["20/s", "100/m", "100/30s"]},
                "create": {"type": "boolean", "default": False,
                           "description": "also for a queue with no job and no settings yet (else a 404)"}}})
            | {"parameters": [_QUEUE]}},
        "/api/jobs": {"get": {"summary": "Jobs, newest first, one page at a time", "parameters": [
            _query("queue", "exact queue name"), _query("task", "exact task name"),
            _query("state", "job state", {"enum": _STATES}), _query("tag", "jobs carrying this tag"),
            _query("since", "enqueued at or after (ISO 8601 with offset)", {"type": "string", "format": "date-time"}),
            _query("cursor", "next_cursor of the previous page"),
            _query("limit", "page size", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50})],
            "responses": {"200": _ok(_ref("JobPage")), **_errors(400)}}},
        "/api/jobs/retry-failed": {"post": _action(
            "Retry every failed job, or one queue's", "Error", 400, 415,
            body={"type": "object", "properties": {"queue": {"type": "string"}}})},
        "/api/jobs/bulk": {"post": _action(
            "Retry, cancel or delete many jobs (one result each)", "Error", 400, 415,
            body={"type": "object", "required": ["action", "ids"], "properties": {
                "action": {"enum": ["retry", "cancel", "delete"]},
                "ids": {"type": "array", "items": {"type": "integer"}, "maxItems": 1000}}})},
        "/api/jobs/{job_id}": {
            "parameters": [_JOB_ID],
            "get": {"summary": "One job with its audit trail", "responses": {
                "200": _ok(_ref("JobWithEvents")), **_errors(404)}},
            "delete": _action("Delete a job that is not running", "JobChange", 404, 409)},
        "/api/jobs/{job_id}/retry": {"parameters": [_JOB_ID], "post": _action(
            "Retry a failed or cancelled job", "JobChange", 404, 409)},
        "/api/jobs/{job_id}/cancel": {"parameters": [_JOB_ID], "post": _action(
            "Cancel a scheduled, available or running job", "JobChange", 404, 409)},
        "/api/schedules": {"get": {"summary": "Cron schedules with their next fire time", "responses": {
            "200": _ok(_items("Schedule")), **_errors()}}},
        "/api/workers": {"get": {"summary": "Worker processes and their heartbeats", "responses": {
            "200": _ok(_items("Worker")), **_errors()}}},
        "/api/breakers": {"get": {"summary": "Circuit breakers of tasks and their state", "responses": {
            "200": _ok(_items("Breaker")), **_errors()}}},
        "/api/health": {"get": {"summary": "pgqueue health checks (503 when unhealthy)", "responses": {
            "200": _ok(_ref("Health")), **_errors()}}},
    }
    # bulk and retry-failed answer with their own shapes; say so instead of pointing at Error.
    paths["/api/jobs/retry-failed"]["post"]["responses"]["200"] = _ok({"type": "object", "properties": {
        "retried": {"type": "array", "items": {"type": "integer"}}, "count": {"type": "integer"},
        # Failed jobs left failed: a live job holds their unique_key.
        "skipped": {"type": "array", "items": {"type": "integer"}}, "skipped_count": {"type": "integer"}}})
    paths["/api/jobs/bulk"]["post"]["responses"]["200"] = _ok({"type": "object", "properties": {
        "action": {"type": "string"}, "done": {"type": "integer"}, "refused": {"type": "integer"},
        "results": {"type": "array", "items": {"type": "object"}}}})
    paths["/api/queues/{name}/purge"]["post"]["responses"]["200"] = _ok({"type": "object", "properties": {
        "queue": {"type": "string"}, "state": {"type": ["string", "null"]}, "purged": {"type": "integer"}}})
    return {
        "openapi": "3.1.0",
        "info": {"title": "pgqueue admin API", "version": __version__,
                 "description": "Operate pgqueue over HTTP. Actions need an admin token (PGQUEUE_ADMIN_TOKEN, or a "
                                "named user's with role admin); a read token only reads. "
                                "Errors are {\"error\": message, \"status\": code}."},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
            "responses": {"Error": {"description": "an error, with a message naming the bad value and the rule",
                                    "content": {"application/json": {"schema": _ref("Error")}}}},
        },
    }
