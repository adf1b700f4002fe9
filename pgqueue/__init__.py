"""pgqueue: a PostgreSQL-native job queue for Python.

Example:
    >>> import pgqueue
    >>> app = pgqueue.App()
    >>> @app.task(name="send-email", queue="emails")
    ... def send_email(job: pgqueue.Job, to: str) -> None: ...
"""

from pgqueue import errors
from pgqueue.app import App
from pgqueue.backoff import Backoff
from pgqueue.jobs import Discard, Job, JobSpec, JobState, Retry
from pgqueue.tasks import Task

__version__ = "0.1.0"

__all__ = ["App", "Backoff", "Discard", "Job", "JobSpec", "JobState", "Retry", "Task", "__version__", "errors"]
