"""pgqueue dashboard: the web dashboard, the JSON admin API and /metrics, from one process."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from pgqueue.cli._context import DsnOption, fail, resolve
from pgqueue.errors import ConfigurationError
from pgqueue.settings import redact_dsn


def dashboard(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8080,
    dsn: DsnOption = None,
) -> None:
    """Serve the dashboard (pages, JSON API under /api/, /metrics, /healthz, /readyz) until Ctrl-C.

    Auth: PGQUEUE_ADMIN_TOKEN may act, PGQUEUE_READ_TOKEN may only read (Authorization: Bearer, or the
    login page for browsers); each at least 16 characters, and they must differ. With no token set it
    serves loopback only, and refuses any other --host.
    """
    try:
        import uvicorn

        from pgqueue.web import create_app
        from pgqueue.web.auth import ADMIN_TOKEN_ENV, READ_TOKEN_ENV, check_tokens, is_loopback, normalize_token
    except ImportError as exc:
        fail(f"the dashboard needs the web extra: pip install 'pgqueue[web]' ({exc.name} is missing)")
    try:  # before the DSN is resolved: a weak token is refused even where the database is unset
        check_tokens(os.environ.get(ADMIN_TOKEN_ENV), os.environ.get(READ_TOKEN_ENV))
    except ConfigurationError as exc:
        fail(str(exc))
    tokens = [normalize_token(os.environ.get(ADMIN_TOKEN_ENV)), normalize_token(os.environ.get(READ_TOKEN_ENV))]
    if not any(tokens) and not is_loopback(host):
        fail(f"refusing to listen on {host!r} without a token: set {ADMIN_TOKEN_ENV} (and {READ_TOKEN_ENV} for "
             "read-only access), or listen on 127.0.0.1")
    target = resolve(dsn)
    app = create_app(target)
    shown = f"[{host}]" if ":" in host else host
    auth = "bearer tokens / login" if any(tokens) else "no auth (loopback only)"
    print(f"pgqueue dashboard on http://{shown}:{port}/ for {redact_dsn(target)} ({auth}); Ctrl-C stops it",
          file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False)
