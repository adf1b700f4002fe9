"""Library logging: structlog when the application configured it, silence otherwise.

An unconfigured structlog prints to stdout, which a library must never do. Until the app calls
``structlog.configure()``, pgqueue's events go to the stdlib logger ``pgqueue.*`` (which has a
NullHandler), so they appear only if the app configured stdlib logging.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import structlog

logging.getLogger("pgqueue").addHandler(logging.NullHandler())

_STDLIB_PROCESSORS: list[Any] = [
    structlog.stdlib.filter_by_level,
    structlog.stdlib.add_log_level,
    structlog.processors.KeyValueRenderer(key_order=["event"], sort_keys=True),
]


@lru_cache(maxsize=64)
def _stdlib_logger(name: str) -> Any:
    return structlog.wrap_logger(
        logging.getLogger(name), processors=_STDLIB_PROCESSORS, wrapper_class=structlog.stdlib.BoundLogger,
    )


def get_logger(name: str, **context: Any) -> Any:
    """A bound logger for ``name`` with ``context`` (job_id, task, queue, attempt ...).

    Cheap enough to call per job: the unconfigured fallback is built once per name.
    """
    if structlog.is_configured():
        return structlog.get_logger(name).bind(**context)
    return _stdlib_logger(name).bind(**context)
