"""Logging setup for the CLI process. The library never configures logging; the CLI does, once."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from pgqueue.settings import configured_secrets, may_hold_secret, scrub_secrets

# What the CLI configured, so `worker --processes N` starts its children logging the same way.
_configured = {"PGQUEUE_LOG_FORMAT": "console", "PGQUEUE_LOG_LEVEL": "info"}


def child_environment() -> dict[str, str]:
    """Environment variables that make a child ``pgqueue`` process log like this one."""
    return dict(_configured)


def configure_logging(log_format: str = "console", level: int = logging.INFO) -> None:
    """Route structlog (and stdlib logging) to stderr, as console lines or JSON."""
    _configured.update(PGQUEUE_LOG_FORMAT=log_format,
                       PGQUEUE_LOG_LEVEL=logging.getLevelName(level).lower())
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        _scrub_secrets,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # A traceback becomes text before the secrets are scrubbed from it, in both formats: the console
    # renderer's own (rich) tracebacks were neither scrubbed nor free of each frame's local
    # variables (a DSN, a handler's arguments).
    processors += [structlog.processors.format_exc_info, _scrub_secrets]
    renderer: structlog.typing.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(),
                                                 exception_formatter=structlog.dev.plain_traceback)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # WriteLogger writes each line and its newline in one write(); PrintLogger's print() makes
        # two, so with PYTHONUNBUFFERED=1 the children of `worker --processes N`, which share one
        # stderr, merged JSON lines ("{...}{...}").
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def _scrub_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Hide passwords in every string of every log line (a DSN in an error message, in any form:
    see :func:`pgqueue.settings.scrub_secrets`), whichever code logged it. A worker logs every
    job: values that cannot hold a secret are left alone without running the patterns."""
    secrets = configured_secrets()
    for key, value in event.items():
        if isinstance(value, str) and value and may_hold_secret(value, secrets):
            event[key] = scrub_secrets(value)
    return event


def set_level(level: int) -> None:
    """Change the minimum level after configure_logging (structlog.configure updates only what it is given)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
