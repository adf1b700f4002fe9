"""The ASGI application: routes, the database pool, auth, and one error policy for every response."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from pgqueue._db.pools import CONNECTION_WAIT_SECONDS, DashboardPool
from pgqueue._humanize import json_default
from pgqueue._log import get_logger
from pgqueue.errors import (
    DatabaseUnavailable,
    EnqueueError,
    InvalidFilter,
    InvalidJobState,
    InvalidQueueLimits,
    JobNotFound,
    PgqueueError,
    QueueNotFound,
    ScheduleNotFound,
    SchemaNotReady,
)
from pgqueue.metrics import Metrics
from pgqueue.settings import resolve_dsn
from pgqueue.web.auth import Authenticator, AuthError, Principal

_HERE = Path(__file__).resolve().parent

log = get_logger(__name__)




class JSON(JSONResponse):
    """JSON with datetimes as ISO 8601 and decimals as numbers."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=json_default, ensure_ascii=False, separators=(",", ":")).encode()


def error_status(exc: PgqueueError) -> int:
    status = getattr(exc, "http_status", None)
    if isinstance(status, int):
        return status
    if isinstance(exc, JobNotFound | QueueNotFound | ScheduleNotFound):
        return 404
    if isinstance(exc, InvalidJobState):
        return 409
    if isinstance(exc, DatabaseUnavailable | SchemaNotReady):
        return 503
    return 400  # InvalidFilter, InvalidQueueLimits, InvalidQueueName and every other bad input


def public_message(exc: PgqueueError) -> str:
    """What the client may read: the rule it broke, never a DSN or the server's own words."""
    if isinstance(exc, DatabaseUnavailable):
        return "database unavailable"
    if isinstance(exc, SchemaNotReady):
        return "the pgqueue schema is missing or out of date: run `pgqueue migrate`"
    if isinstance(exc, InvalidFilter | InvalidQueueLimits | InvalidJobState | JobNotFound | QueueNotFound
                  | ScheduleNotFound | EnqueueError):
        return str(exc)
    doc = type(exc).__doc__
    return doc.splitlines()[0] if doc else "request refused"


class Dashboard:
    """What every route shares: the pool, the authenticator, templates, and metrics."""

    def __init__(self, dsn: str, auth: Authenticator, *, poll_seconds: float) -> None:
        self.dsn = dsn
        self.pool = DashboardPool(dsn)
        self.auth = auth
        self.poll_seconds = poll_seconds
        self.templates = Jinja2Templates(directory=str(_HERE / "templates"))
        self.metrics = Metrics(self.pool.connection, outcomes_from_database=True)
        self.schema_ok: tuple[str | None, bool] = (None, False)  # (revision seen, at head?)

    @contextmanager
    def connection(self, timeout: float = CONNECTION_WAIT_SECONDS) -> Iterator[Any]:
        with self.pool.connection(timeout) as conn:
            yield conn

    def principal(self, request: Request) -> Principal:
        principal = getattr(request.state, "principal", None)
        if principal is None:
            principal = self.auth.identify(request)
            request.state.principal = principal
        return principal

    def actor(self, request: Request) -> str:
        principal = self.principal(request)
        self.auth.check_action(request, principal)
        return principal.actor


def _api_error(status: int, message: str) -> JSON:
    return JSON({"error": message, "status": status}, status_code=status)


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith(("/api/", "/metrics", "/healthz", "/readyz"))


def create_app(dsn: str | None = None, *, admin_token: str | None = None, read_token: str | None = None,
               users_file: str | os.PathLike[str] | None = None, poll_seconds: float = 3.0) -> Starlette:
    """The dashboard and HTTP admin API as an ASGI app, to serve alone (``pgqueue dashboard``) or to
    mount in your own Starlette/FastAPI app (``app.mount("/pgqueue", create_app(dsn))``).

    Args:
        dsn: the database (default: ``PGQUEUE_DSN``, ``DATABASE_URL``, then the embedded server).
        admin_token, read_token: bearer tokens (default: ``PGQUEUE_ADMIN_TOKEN``,
            ``PGQUEUE_READ_TOKEN``). With no token and no users file, only loopback clients are answered.
        users_file: a file of named users, one ``<name> <role> <token>`` a line (default:
            ``PGQUEUE_DASHBOARD_USERS_FILE``; see :func:`pgqueue.web.auth.load_users`). What a
            user does is audited under their name.
        poll_seconds: how often open pages refresh their live parts.

    Raises:
        ConfigurationError: a token under 16 characters or beyond printable ASCII, a read token
            equal to the admin token, or a users file that cannot be read, may be written by other
            users, or has a bad line.

    Example:
        >>> from fastapi import FastAPI
        >>> api = FastAPI()
        >>> api.mount("/pgqueue", pgqueue.web.create_app(dsn, users_file="/run/secrets/pgqueue-users"))
    """
    auth = Authenticator.from_env(admin_token, read_token, users_file)
    return build_app(resolve_dsn(dsn).dsn, auth, poll_seconds=poll_seconds)


def build_app(dsn: str, auth: Authenticator, *, poll_seconds: float = 3.0) -> Starlette:
    """:func:`create_app` with its authenticator already made: ``pgqueue dashboard`` checks the
    tokens and reads the users file before it resolves the DSN, and serves what it checked."""
    from pgqueue.web import api, pages

    dashboard = Dashboard(dsn, auth, poll_seconds=poll_seconds)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        dashboard.pool.open()
        try:
            yield
        finally:
            dashboard.pool.close()

    async def auth_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, AuthError):
            raise exc
        if _wants_html(request) and exc.status == 401:
            return pages.login_page(dashboard, request, status=401)
        if _wants_html(request):
            return pages.error_page(dashboard, request, exc.status, exc.message)
        response = _api_error(exc.status, exc.message)
        if exc.status == 401:  # RFC 9110: a 401 names the scheme that would be accepted
            response.headers["WWW-Authenticate"] = 'Bearer realm="pgqueue"'
        return response

    async def pgqueue_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, PgqueueError):
            raise exc
        status, message = error_status(exc), public_message(exc)
        if status >= 500:
            log.warning("web.database_unavailable", error_type=type(exc).__name__, path=request.url.path)
        if _wants_html(request) and not request.headers.get("hx-request"):
            return pages.error_page(dashboard, request, status, message)
        return _api_error(status, message)

    async def http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):
            raise exc
        if _wants_html(request) and exc.status_code == 404:
            return pages.error_page(dashboard, request, 404, "no such page")
        return _api_error(exc.status_code, str(exc.detail))

    async def internal_error(request: Request, exc: Exception) -> Response:
        # The traceback goes to the server's log, never to the client.
        log.error("web.internal_error", error_type=type(exc).__name__, path=request.url.path, exc_info=exc)
        if _wants_html(request) and not request.headers.get("hx-request"):
            try:  # a person gets a page with the dashboard's links, as for any other error
                return pages.error_page(dashboard, request, 500, "internal error (the server's log says why)")
            except Exception:  # noqa: BLE001 - the page itself failed: the plain answer still goes out
                log.error("web.error_page_failed", path=request.url.path)
        return _api_error(500, "internal error")

    routes: list[Route | Mount] = [
        Route("/healthz", api.healthz),
        Route("/readyz", api.readyz),
        Route("/metrics", api.metrics),
        *api.routes(),
        *pages.routes(),
        Mount("/static", app=StaticFiles(directory=str(_HERE / "static")), name="static"),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Any]] = {
        AuthError: auth_error, PgqueueError: pgqueue_error, HTTPException: http_error, Exception: internal_error,
    }
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.dashboard = dashboard
    return app


def dashboard_of(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard
