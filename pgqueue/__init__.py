"""pgqueue: a PostgreSQL-native job queue for Python.

Example:
    >>> import pgqueue
    >>> app = pgqueue.App()
    >>> @app.task(name="send-email", queue="emails")
    ... def send_email(job: pgqueue.Job, to: str) -> None: ...
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgqueue import admin as admin  # "as": re-exported for type checkers, not in __all__
    from pgqueue import errors
    from pgqueue import schedules as schedules
    from pgqueue.app import App
    from pgqueue.backoff import Backoff
    from pgqueue.breakers import CircuitBreaker
    from pgqueue.jobs import Cancelled, Discard, Job, JobSpec, JobState, Retry, Snooze
    from pgqueue.tasks import Priority, Task
    from pgqueue.worker import Worker
    from pgqueue.workflows import Signature, Workflow, chain, group, sig

__version__ = "0.1.0"

__all__ = [
    "App", "Backoff", "Cancelled", "CircuitBreaker", "Discard", "Job", "JobSpec", "JobState", "Priority", "Retry",
    "Signature", "Snooze", "Task", "Worker", "Workflow", "__version__", "chain", "errors", "group", "sig",
]

# Each public name is imported on first use: `import pgqueue` runs before every `pgqueue` command
# (`pgqueue --help` included), and the App brings in psycopg, which such commands never need.
_PUBLIC: dict[str, str] = {
    "App": "pgqueue.app",
    "Backoff": "pgqueue.backoff",
    "Cancelled": "pgqueue.jobs",
    "CircuitBreaker": "pgqueue.breakers",
    "Discard": "pgqueue.jobs",
    "Job": "pgqueue.jobs",
    "JobSpec": "pgqueue.jobs",
    "JobState": "pgqueue.jobs",
    "Retry": "pgqueue.jobs",
    "Snooze": "pgqueue.jobs",
    "Priority": "pgqueue.tasks",
    "Task": "pgqueue.tasks",
    "Signature": "pgqueue.workflows",
    "Workflow": "pgqueue.workflows",
    "chain": "pgqueue.workflows",
    "group": "pgqueue.workflows",
    "sig": "pgqueue.workflows",
    # The worker (asyncio, the pools) too: an application that only enqueues never pays for it.
    "Worker": "pgqueue.worker",
}


# Public modules the documentation calls through the package (`pgqueue.admin.cancel_job(conn, id)`),
# reachable after `import pgqueue` alone, loaded on first use like the names above.
_MODULES = frozenset({"admin", "errors", "schedules"})


def __getattr__(name: str) -> object:
    if name in _MODULES:
        return importlib.import_module(f"pgqueue.{name}")
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'pgqueue' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
