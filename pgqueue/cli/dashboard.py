"""pgqueue dashboard: the web dashboard, the JSON admin API and /metrics, from one process."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from pgqueue.cli._context import DsnOption, fail, resolve
from pgqueue.errors import ConfigurationError
from pgqueue.settings import redact_dsn


def dashboard(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8080,
    users_file: Annotated[str | None, typer.Option(
        "--users-file", envvar="PGQUEUE_DASHBOARD_USERS_FILE", show_envvar=False, metavar="PATH",
        help="Named users, one '<name> <role> <token>' a line (role admin or read): each acts under their "
             "own name in the audit trail. Also PGQUEUE_DASHBOARD_USERS_FILE.")] = None,
    dsn: DsnOption = None,
) -> None:
    """Serve the dashboard (pages, JSON API under /api/, /metrics, /healthz, /readyz) until Ctrl-C.

    Auth: PGQUEUE_ADMIN_TOKEN may act, PGQUEUE_READ_TOKEN may only read (Authorization: Bearer, or the
    login page for browsers); each at least 16 characters of printable ASCII, and they must differ. A users file gives
    each person a token of their own, so that the audit trail names who acted. With no token set it
    serves loopback only, and refuses any other --host.
    """
    try:
        import uvicorn

        from pgqueue.web.app import build_app
        from pgqueue.web.auth import ADMIN_TOKEN_ENV, READ_TOKEN_ENV, USERS_FILE_ENV, Authenticator, is_loopback
    except ImportError as exc:
        fail(f"the dashboard needs the web extra: pip install 'pgqueue[web]' ({exc.name} is missing)")
    try:  # before the DSN is resolved: a weak token or a bad users file is refused even where the database is unset
        auth = Authenticator.from_env(users_file=users_file or "")
    except ConfigurationError as exc:
        fail(str(exc))
    if auth.open and not is_loopback(host):
        fail(f"refusing to listen on {host!r} without a token: set {ADMIN_TOKEN_ENV} (and {READ_TOKEN_ENV} for "
             f"read-only access) or {USERS_FILE_ENV}, or listen on 127.0.0.1")
    target = resolve(dsn)
    app = build_app(target, auth)
    shown = f"[{host}]" if ":" in host else host
    named = f", {len(auth.users)} named users" if auth.users else ""
    mode = f"bearer tokens / login{named}" if not auth.open else "no auth (loopback only)"
    print(f"pgqueue dashboard on http://{shown}:{port}/ for {redact_dsn(target)} ({mode}); Ctrl-C stops it",
          file=sys.stderr)
    # uvicorn logs its own copy of an error the app raised, as a plain-text traceback: not the log
    # format asked for, and not scrubbed of passwords. The app logged it already (web.internal_error).
    # A logger's filter outlives uvicorn's logging set-up, which replaces only handlers.
    logging.getLogger("uvicorn.error").addFilter(_not_an_app_error)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False)


def _not_an_app_error(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Exception in ASGI application")
