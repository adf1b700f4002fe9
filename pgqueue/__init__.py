"""pgqueue: a PostgreSQL-native job queue for Python.

Example:
    >>> import pgqueue
    >>> app = pgqueue.App()
    >>> @app.task(name="send-email", queue="emails")
    ... def send_email(job: pgqueue.Job, to: str) -> None: ...
"""

from typing import TYPE_CHECKING, Any

from pgqueue import errors
from pgqueue.app import App
from pgqueue.backoff import Backoff
from pgqueue.jobs import Discard, Job, JobSpec, JobState, Retry
from pgqueue.tasks import Task

if TYPE_CHECKING:
    from pgqueue.worker import Worker

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The worker (asyncio, the pools, structlog) is imported on first use: an application that
    # only enqueues never pays for it.
    if name == "Worker":
        from pgqueue.worker import Worker

        return Worker
    raise AttributeError(f"module 'pgqueue' has no attribute {name!r}")


__all__ = [
    "App", "Backoff", "Discard", "Job", "JobSpec", "JobState", "Retry", "Task", "Worker", "__version__", "errors",
]
