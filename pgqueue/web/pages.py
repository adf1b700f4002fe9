"""The HTML pages: server-rendered (readable without JavaScript), live parts refreshed with htmx.

Each page renders its live part from a partial template; htmx asks for that part alone
(``?fragment=1``) every few seconds and right after an action (the ``pgqueue-changed`` event the
API's responses trigger). Actions are buttons that call the JSON API (json-enc, CSRF header).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from pgqueue import admin
from pgqueue._humanize import format_seconds, whole_number
from pgqueue.errors import WorkflowNotFound
from pgqueue.jobs import JobState
from pgqueue.web.api import job_filters
from pgqueue.web.app import Dashboard, dashboard_of
from pgqueue.web.auth import COOKIE, CSRF_HEADER

CHART_BUCKET = timedelta(minutes=5)
CHART_BUCKETS = 12  # the last hour
#: Jobs of its workflow a job page lists (and the job itself); the counts cover all of them.
WORKFLOW_ROWS = 50


def _ago(value: datetime | None) -> str:
    if value is None:
        return "-"
    seconds = (datetime.now(UTC) - value).total_seconds()
    return f"{format_seconds(seconds)} ago" if seconds >= 0 else f"in {format_seconds(-seconds)}"


def _time(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _context(dashboard: Dashboard, request: Request, **extra: Any) -> dict[str, Any]:
    principal = getattr(request.state, "principal", None)
    base = request.scope.get("root_path", "")
    # The page's own path, without the prefix the app is mounted under (what the nav's links name).
    path = request.url.path[len(base):] if base and request.url.path.startswith(base) else request.url.path
    return {
        "base": base, "principal": principal,
        "csrf": json.dumps({CSRF_HEADER: principal.csrf}) if principal and principal.csrf else "",
        "poll": dashboard.poll_seconds, "ago": _ago, "time": _time, "seconds": format_seconds, "pretty": _pretty,
        "states": [str(s) for s in JobState], "path": path or "/", **extra,
    }


def _render(request: Request, template: str, partial: str, **extra: Any) -> Response:
    dashboard = dashboard_of(request)
    context = _context(dashboard, request, partial=partial, **extra)
    if request.headers.get("hx-request") and request.query_params.get("fragment"):
        return dashboard.templates.TemplateResponse(request, partial, context)
    return dashboard.templates.TemplateResponse(request, template, context)


def login_page(dashboard: Dashboard, request: Request, *, status: int = 200, message: str = "") -> Response:
    return dashboard.templates.TemplateResponse(
        request, "login.html", _context(dashboard, request, message=message, title="Log in"), status_code=status)


def error_page(dashboard: Dashboard, request: Request, status: int, message: str) -> Response:
    return dashboard.templates.TemplateResponse(
        request, "error.html", _context(dashboard, request, status=status, message=message, title="Error"),
        status_code=status)


# --- overview -------------------------------------------------------------------------------------


def _charts(rows: list[dict[str, Any]], now: datetime) -> dict[str, list[tuple[datetime, int, int]]]:
    """Per queue, the last hour in 5-minute buckets: (start, completed, failed), oldest first."""
    epoch = datetime(2000, 1, 1, tzinfo=UTC)  # the reports' date_bin origin
    last = epoch + ((now - epoch) // CHART_BUCKET) * CHART_BUCKET
    starts = [last - CHART_BUCKET * k for k in range(CHART_BUCKETS - 1, -1, -1)]
    found = {(row["queue"], row["bucket_start"].astimezone(UTC)): row for row in rows}
    charts: dict[str, list[tuple[datetime, int, int]]] = {}
    for queue in sorted({row["queue"] for row in rows}):
        charts[queue] = [(start, int(found[(queue, start)]["completed"]) if (queue, start) in found else 0,
                          int(found[(queue, start)]["failed"]) if (queue, start) in found else 0) for start in starts]
    return charts


def overview(request: Request) -> Response:
    dashboard = dashboard_of(request)
    dashboard.principal(request)
    with dashboard.connection() as conn:
        queues = admin.list_queues(conn)
        throughput = admin.report(conn, "throughput", window="1 hour", bucket="5 minutes")
        workers = admin.list_workers(conn)
        breakers = admin.list_breakers(conn)
    charts = _charts(throughput, datetime.now(UTC))
    empty = [(datetime.now(UTC), 0, 0)] * CHART_BUCKETS
    peak = max([c + f for series in charts.values() for _, c, f in series] or [0]) or 1
    return _render(request, "overview.html", "_overview.html", title="Overview", queues=queues,
                   charts={q.name: charts.get(q.name, empty) for q in queues}, peak=peak,
                   live_workers=sum(1 for w in workers if w.alive), breakers=breakers)


# --- jobs -----------------------------------------------------------------------------------------


def jobs(request: Request) -> Response:
    dashboard = dashboard_of(request)
    dashboard.principal(request)
    params = request.query_params
    wanted_id = (params.get("id") or "").strip().lstrip("#")
    if wanted_id:
        number = whole_number(wanted_id)
        if number is None:
            return error_page(dashboard, request, 400, f"job id {wanted_id!r} must be a positive integer")
        return RedirectResponse(f"{request.scope.get('root_path', '')}/jobs/{number}", status_code=303)
    filters = job_filters(params)
    with dashboard.connection() as conn:
        page = admin.list_jobs(conn, **filters)
    kept = {k: v for k, v in params.items() if k in ("queue", "task", "state", "tag", "since", "limit") and v}
    older = f"?{urlencode(kept | {'cursor': page.next_cursor})}" if page.next_cursor else None
    return _render(request, "jobs.html", "_jobs.html", title="Jobs", page=page, filters=kept,
                   older=older, first_page=not filters["cursor"], query=urlencode(kept))


def job(request: Request) -> Response:
    dashboard = dashboard_of(request)
    dashboard.principal(request)
    raw = request.path_params["job_id"]
    job_id = whole_number(raw)
    if job_id is None:
        return error_page(dashboard, request, 404, f"job id {raw!r} must be a positive integer")
    with dashboard.connection() as conn:
        record = admin.get_job(conn, job_id)
        events = admin.list_job_events(conn, job_id)
        try:  # a chain or group the job belongs to (pgqueue.workflows), shown below the job
            # The page polls: its first rows (and this job's) and counts from SQL, never the
            # whole of a 5,000-job group each refresh.
            workflow: admin.WorkflowHead | None = admin.get_workflow_head(
                conn, record.id, limit=WORKFLOW_ROWS, include=record.id)
        except WorkflowNotFound:
            workflow = None
    return _render(request, "job.html", "_job.html", title=f"Job {record.id}", job=record, events=events,
                   workflow=workflow, fast_poll=1 if not record.finished else None)


# --- queues, schedules, workers -----------------------------------------------------------------------


def queues(request: Request) -> Response:
    dashboard = dashboard_of(request)
    dashboard.principal(request)
    with dashboard.connection() as conn:
        found = admin.list_queues(conn)
    return _render(request, "queues.html", "_queues.html", title="Queues", queues=found,
                   purgeable=admin.PURGEABLE_STATES)


def schedules(request: Request) -> Response:
    dashboard = dashboard_of(request)
    dashboard.principal(request)
    with dashboard.connection() as conn:
        found = admin.list_schedules(conn)
    return _render(request, "schedules.html", "_schedules.html", title="Schedules", schedules=found)


def workers(request: Request) -> Response:
    dashboard = dashboard_of(request)
    dashboard.principal(request)
    with dashboard.connection() as conn:
        found = admin.list_workers(conn)
    return _render(request, "workers.html", "_workers.html", title="Workers", workers=found)


# --- login ----------------------------------------------------------------------------------------


async def login(request: Request) -> Response:
    dashboard = dashboard_of(request)
    if request.method == "GET":
        return login_page(dashboard, request)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0]
    if dashboard.auth.open:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/", status_code=303)
    cookie = dashboard.auth.login(token)
    if cookie is None:
        return login_page(dashboard, request, status=401, message="That token is not valid.")
    response = RedirectResponse(f"{request.scope.get('root_path', '')}/", status_code=303)
    # The cookie keeps its name from when it held the raw token: logging in again overwrites such an old one.
    response.set_cookie(COOKIE, cookie, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                        path=request.scope.get("root_path", "") or "/")
    return response


def logout(request: Request) -> Response:
    response = RedirectResponse(f"{request.scope.get('root_path', '')}/login", status_code=303)
    response.delete_cookie(COOKIE, path=request.scope.get("root_path", "") or "/")
    return response


def routes() -> list[Route]:
    return [
        Route("/", overview),
        Route("/jobs", jobs),
        Route("/jobs/{job_id}", job),
        Route("/queues", queues),
        Route("/schedules", schedules),
        Route("/workers", workers),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]

