"""The JSON API under /api/ (schema: /api/openapi.json), and /healthz, /readyz, /metrics.

Each route is a thin layer over :mod:`pgqueue.admin`: parse, check the principal, call, render.
Errors are JSON ``{"error": message, "status": code}``: 400 bad input, 401/403 auth, 404 unknown
job or queue, 409 wrong state, 415 a body that is not JSON, 503 database unavailable.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pgqueue import admin
from pgqueue._db.server import ServerStore
from pgqueue._humanize import whole_number
from pgqueue.errors import DatabaseUnavailable, InvalidFilter, InvalidQueueLimits, JobNotFound, PgqueueError
from pgqueue.web.app import JSON, dashboard_of
from pgqueue.web.openapi import openapi_document

_MAX_BULK = 1000
#: Recorded in the audit row's detail of every action taken through the API or the pages.
SOURCE = "web"
_MAX_BODY = 64 * 1024


def healthz(request: Request) -> Response:
    """The process is up (no auth, no database)."""
    return JSON({"status": "ok"})


#: How long /readyz waits for a connection. A probe gives up after its own timeout (Kubernetes:
#: 1 s by default); the API's 10 s wait would turn "database down" into "probe timed out".
READY_WAIT_SECONDS = 1.0


def readyz(request: Request) -> Response:
    """The database answers and its schema is at this pgqueue's newest migration (no auth)."""
    dashboard = dashboard_of(request)
    try:
        with dashboard.connection(READY_WAIT_SECONDS) as conn:
            revision = ServerStore(conn).schema_revision()
    except PgqueueError:
        return JSON({"status": "unavailable", "reason": "database unavailable"}, status_code=503)
    seen, current = dashboard.schema_ok
    if revision != seen:  # ask alembic only when the stored revision changed
        try:
            current = revision is not None and not _pending(dashboard.dsn)
        except DatabaseUnavailable:
            # Alembic's own connection failed: nothing is known, so nothing is remembered (a
            # remembered False would keep /readyz at 503 until the revision changed, i.e. forever).
            return JSON({"status": "unavailable", "reason": "database unavailable"}, status_code=503)
        except PgqueueError:  # a revision this pgqueue does not know: not current, for good
            current = False
        dashboard.schema_ok = (revision, current)
    if not current:
        return JSON({"status": "unavailable", "reason": "the pgqueue schema is not at this version's newest "
                                                        "migration: run `pgqueue migrate`"}, status_code=503)
    return JSON({"status": "ready", "revision": revision})


def _pending(dsn: str) -> list[str]:
    from pgqueue import _migrate

    return _migrate.check(dsn)


def metrics(request: Request) -> Response:
    dashboard = dashboard_of(request)
    dashboard.principal(request)
    body, content_type = dashboard.metrics.exposition()
    return Response(body, media_type=content_type)


# --- parsing ------------------------------------------------------------------------------------


def _job_id(request: Request) -> int:
    raw = request.path_params["job_id"]
    job_id = whole_number(raw)
    if job_id is None or not 1 <= job_id <= 2**63 - 1:
        raise JobNotFound(f"job id {raw!r} must be a positive integer")
    return job_id


def _since(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        value = None
    if value is None or value.utcoffset() is None:
        # An offset's + left unescaped in a URL arrives as a space: say so, or the rule looks met.
        hint = " (in a URL, write the offset's + as %2B)" if " " in raw.strip() else ""
        raise InvalidFilter(f"since {raw!r} must be an ISO 8601 time with a UTC offset, e.g. "
                            f"2030-01-02T09:00:00Z{hint}")
    return value


def _limit(raw: str | None, default: int = 50) -> int:
    if raw is None or raw == "":
        return default
    limit = whole_number(raw)
    if limit is None:
        raise InvalidFilter(f"limit {raw!r} must be between 1 and {admin.MAX_PAGE_SIZE}")
    return limit


_JOB_FILTERS = frozenset({"queue", "task", "state", "tag", "since", "cursor", "limit"})


def job_filters(params: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`pgqueue.admin.list_jobs` from query parameters (shared by pages)."""
    unknown = sorted(set(params) - _JOB_FILTERS - {"id", "fragment"})
    if unknown:
        raise InvalidFilter(f"unknown filter {unknown[0]!r}; filters: {', '.join(sorted(_JOB_FILTERS))}")
    return {"queue": params.get("queue") or None, "task": params.get("task") or None,
            "state": params.get("state") or None, "tag": params.get("tag") or None,
            "since": _since(params.get("since")), "cursor": params.get("cursor") or None,
            "limit": _limit(params.get("limit"))}


async def _body(request: Request, *, required: bool = False) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        if required:
            raise InvalidFilter("this request needs a JSON object body")
        return {}
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise _UnsupportedMedia("a request body must be JSON: send Content-Type: application/json")
    if len(raw) > _MAX_BODY:
        raise InvalidFilter(f"the body is over {_MAX_BODY} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidFilter("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidFilter("the body must be a JSON object")
    return data


class _UnsupportedMedia(InvalidFilter):
    """A request body must be JSON (Content-Type: application/json)."""

    http_status = 415


# --- routes -------------------------------------------------------------------------------------


def _page(page: admin.Page[admin.JobRecord]) -> dict[str, Any]:
    return {"items": [job.as_dict() for job in page.items], "next_cursor": page.next_cursor, "scanned": page.scanned}


def list_queues(request: Request) -> Response:
    dashboard = dashboard_of(request)
    dashboard.principal(request)
    with dashboard.connection() as conn:
        return JSON({"items": [queue.as_dict() for queue in admin.list_queues(conn)]})


def list_jobs(request: Request) -> Response:
    dashboard = dashboard_of(request)
    dashboard.principal(request)
    filters = job_filters(request.query_params)
    with dashboard.connection() as conn:
        return JSON(_page(admin.list_jobs(conn, **filters)))


def get_job(request: Request) -> Response:
    dashboard = dashboard_of(request)
    dashboard.principal(request)
    job_id = _job_id(request)
    with dashboard.connection() as conn:
        job = admin.get_job(conn, job_id)
        events = admin.list_job_events(conn, job_id)
    return JSON(job.as_dict() | {"events": [event.as_dict() for event in events]})


def _refresh(content: dict[str, Any], status: int = 200) -> Response:
    # HX-Trigger: pages re-read their live parts at once after an action.
    return JSON(content, status_code=status, headers={"HX-Trigger": "pgqueue-changed"})


def retry_job(request: Request) -> Response:
    dashboard = dashboard_of(request)
    actor = dashboard.actor(request)
    job_id = _job_id(request)
    with dashboard.connection() as conn:
        return _refresh(admin.retry_job(conn, job_id, actor=actor, source=SOURCE).as_dict())


def cancel_job(request: Request) -> Response:
    dashboard = dashboard_of(request)
    actor = dashboard.actor(request)
    job_id = _job_id(request)
    with dashboard.connection() as conn:
        return _refresh(admin.cancel_job(conn, job_id, actor=actor, source=SOURCE).as_dict())


def delete_job(request: Request) -> Response:
    dashboard = dashboard_of(request)
    actor = dashboard.actor(request)
    job_id = _job_id(request)
    with dashboard.connection() as conn:
        return _refresh(admin.delete_job(conn, job_id, actor=actor, source=SOURCE).as_dict())


async def retry_failed(request: Request) -> Response:
    dashboard = dashboard_of(request)
    actor = dashboard.actor(request)
    body = await _body(request)
    queue = body.get("queue") or None
    if queue is not None and not isinstance(queue, str):
        raise InvalidFilter("queue must be a string")
    with dashboard.connection() as conn:
        retried = admin.retry_failed(conn, queue=queue, actor=actor, source=SOURCE)
    return _refresh(retried.as_dict())


_BULK_ACTIONS = {"retry": admin.retry_job, "cancel": admin.cancel_job, "delete": admin.delete_job}


async def bulk(request: Request) -> Response:
    """Retry, cancel or delete many jobs, each on its own (one job in the wrong state does not stop
    the others): one result per id, in a single transaction."""
    dashboard = dashboard_of(request)
    actor = dashboard.actor(request)
    body = await _body(request, required=True)
    action = body.get("action")
    if action not in _BULK_ACTIONS:
        raise InvalidFilter(f"action {action!r} must be one of {', '.join(_BULK_ACTIONS)}")
    raw_ids = body.get("ids")
    raw_ids = [raw_ids] if isinstance(raw_ids, str | int) else raw_ids
    if not isinstance(raw_ids, list) or not raw_ids or len(raw_ids) > _MAX_BULK:
        raise InvalidFilter(f"ids must be a list of 1 to {_MAX_BULK} job ids")
    ids = []
    for raw in raw_ids:
        job_id = None if isinstance(raw, bool) else whole_number(str(raw))
        if job_id is None:
            raise InvalidFilter(f"job id {raw!r} must be a positive integer")
        ids.append(job_id)
    results: list[dict[str, Any]] = []
    with dashboard.connection() as conn:
        for job_id in ids:
            try:
                change = _BULK_ACTIONS[action](conn, job_id, actor=actor, source=SOURCE)
                results.append({"id": job_id, "ok": True, "previous_state": change.previous_state,
                                "state": change.state})
            except PgqueueError as exc:
                results.append({"id": job_id, "ok": False, "error": str(exc)})
    done = sum(1 for r in results if r["ok"])
    return _refresh({"action": action, "done": done, "refused": len(results) - done, "results": results})


def _queue_name(request: Request) -> str:
    name: str = request.path_params["name"]
    return name


def pause_queue(request: Request) -> Response:
    dashboard = dashboard_of(request)
    actor = dashboard.actor(request)
    with dashboard.connection() as conn:
        return _refresh(admin.pause_queue(conn, _queue_name(request), actor=actor, source=SOURCE).as_dict())


def resume_queue(request: Request) -> Response:
    dashboard = dashboard_of(request)
    actor = dashboard.actor(request)
    with dashboard.connection() as conn:
        return _refresh(admin.resume_queue(conn, _queue_name(request), actor=actor, source=SOURCE).as_dict())


async def purge_queue(request: Request) -> Response:
    dashboard = dashboard_of(request)
    actor = dashboard.actor(request)
    body = await _body(request)
    state = body.get("state") or None
    if state is not None and not isinstance(state, str):
        raise InvalidFilter("state must be a string")
    queue = _queue_name(request)
    with dashboard.connection() as conn:
        purged = admin.purge_queue(conn, queue, state=state, actor=actor, source=SOURCE)
    return _refresh({"queue": queue, "state": state, "purged": purged})


def _limit_value(body: dict[str, Any], key: str) -> Any:
    if key not in body:
        return admin.UNCHANGED
    value = body[key]
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if key == "concurrency" and isinstance(value, str):
        number = whole_number(value.strip())
        if number is None:
            raise InvalidQueueLimits(f"concurrency {value!r} must be a whole number >= 1 or null")
        return number
    if key == "rate" and not isinstance(value, str):
        raise InvalidQueueLimits(f"rate {value!r} must be a string such as \"20/s\", or null")
    return value


async def set_limits(request: Request) -> Response:
    dashboard = dashboard_of(request)
    actor = dashboard.actor(request)
    body = await _body(request, required=True)
    unknown = sorted(set(body) - {"concurrency", "rate", "create"})
    if unknown:
        raise InvalidQueueLimits(f"unknown limit {unknown[0]!r}: give concurrency, rate or both")
    create = body.get("create", False)
    if not isinstance(create, bool):
        raise InvalidQueueLimits(f"create {create!r} must be true or false")
    with dashboard.connection() as conn:
        info = admin.set_queue_limits(conn, _queue_name(request), concurrency=_limit_value(body, "concurrency"),
                                      rate=_limit_value(body, "rate"), actor=actor, create=create, source=SOURCE)
    return _refresh(info.as_dict())


def list_schedules(request: Request) -> Response:
    dashboard = dashboard_of(request)
    dashboard.principal(request)
    with dashboard.connection() as conn:
        return JSON({"items": [schedule.as_dict() for schedule in admin.list_schedules(conn)]})


def list_workers(request: Request) -> Response:
    dashboard = dashboard_of(request)
    dashboard.principal(request)
    with dashboard.connection() as conn:
        return JSON({"items": [worker.as_dict() for worker in admin.list_workers(conn)]})


def list_breakers(request: Request) -> Response:
    dashboard = dashboard_of(request)
    dashboard.principal(request)
    with dashboard.connection() as conn:
        return JSON({"items": [breaker.as_dict() for breaker in admin.list_breakers(conn)]})


def health(request: Request) -> Response:
    dashboard = dashboard_of(request)
    dashboard.principal(request)
    report = admin.health(dashboard.dsn, shown_dsn=lambda _: "the configured database")
    return JSON(report.as_dict(), status_code=200 if report.healthy else 503)


def openapi(request: Request) -> Response:
    dashboard_of(request).principal(request)
    return JSON(openapi_document())


def routes() -> list[Route]:
    return [
        Route("/api/openapi.json", openapi),
        Route("/api/queues", list_queues),
        Route("/api/queues/{name}/pause", pause_queue, methods=["POST"]),
        Route("/api/queues/{name}/resume", resume_queue, methods=["POST"]),
        Route("/api/queues/{name}/purge", purge_queue, methods=["POST"]),
        Route("/api/queues/{name}/limits", set_limits, methods=["PUT"]),
        Route("/api/jobs", list_jobs),
        Route("/api/jobs/retry-failed", retry_failed, methods=["POST"]),
        Route("/api/jobs/bulk", bulk, methods=["POST"]),
        Route("/api/jobs/{job_id}", get_job),
        Route("/api/jobs/{job_id}", delete_job, methods=["DELETE"]),
        Route("/api/jobs/{job_id}/retry", retry_job, methods=["POST"]),
        Route("/api/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
        Route("/api/schedules", list_schedules),
        Route("/api/workers", list_workers),
        Route("/api/breakers", list_breakers),
        Route("/api/health", health),
    ]
