"""pgqueue enqueue TASK: put one job on a queue from the shell and print its id.

Validation is :meth:`pgqueue.App.enqueue`'s, so the CLI accepts exactly what the Python API accepts.
The CLI loads no application, so it cannot see a task's ``encrypt=True``: it asks
``pgqueue.encrypted_tasks`` (written by every worker at start) and encrypts such a task's args as
``--encrypt`` does.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Annotated, Any

import typer

from pgqueue._db.jobs import JobStore
from pgqueue._payload import is_task_name
from pgqueue.app import App, check_enqueue_options
from pgqueue.cli._admin import open_session
from pgqueue.cli._context import DsnOption, JsonOption, checking_options, fail, usage_error
from pgqueue.cli._output import print_json
from pgqueue.errors import EncryptionKeyMissing
from pgqueue.tasks import resolve_priority


def _parse_args(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        usage_error(f"--args is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} "
                    f"(character {exc.pos})")
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
        usage_error(f"--args must be a JSON object such as '{{\"to\": \"a@example.com\"}}', got {kind}")
    return value


def _parse_run_at(raw: str) -> datetime:
    try:
        when = datetime.fromisoformat(raw.strip())
    except ValueError:
        usage_error(f"--run-at {raw!r} is not an ISO 8601 date-time such as 2030-01-01T09:00:00+00:00")
    if when.tzinfo is None or when.utcoffset() is None:
        usage_error(f"--run-at {raw!r} needs a UTC offset (e.g. {raw.strip()}+00:00 or {raw.strip()}Z)")
    return when


def enqueue(
    task: Annotated[str, typer.Argument(metavar="TASK", help="The task name.", show_default=False)],
    args: Annotated[
        str | None, typer.Option("--args", "-a", help='Handler arguments as a JSON object, e.g. \'{"to": "a@b.c"}\'.')
    ] = None,
    queue: Annotated[str | None, typer.Option("--queue", "-q", help="Queue (default: 'default').")] = None,
    priority: Annotated[
        str | None, typer.Option("--priority", "-p", help="Integer (smaller runs first) or critical|high|normal|low.")
    ] = None,
    delay: Annotated[float | None, typer.Option("--delay", help="Seconds to wait before the job may run.")] = None,
    run_at: Annotated[
        str | None, typer.Option("--run-at", help="When it may run: ISO 8601 with a UTC offset.")
    ] = None,
    max_attempts: Annotated[int | None, typer.Option("--max-attempts", help="Attempts before it fails.")] = None,
    unique_key: Annotated[
        str | None, typer.Option("--unique-key", help="Reuse the live job with this key instead of adding one.")
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", "-t", help="A plaintext label (repeatable; no PHI).")
    ] = None,
    encrypt: Annotated[
        bool, typer.Option("--encrypt", help=(
            "Store args encrypted (needs PGQUEUE_ENCRYPTION_KEYS). Implied for a task its workers declare "
            "encrypt=True."))
    ] = False,
    group: Annotated[
        str | None, typer.Option("--group", help=(
            "Group key, e.g. patient:42: a task with group_concurrency=N runs N of a group at once (no PHI)."))
    ] = None,
    depends_on: Annotated[
        list[int] | None,
        typer.Option("--depends-on", metavar="ID", help="A job that must complete first (repeatable); "
                                                        "until then the job is 'waiting'."),
    ] = None,
    on_dependency_failure: Annotated[
        str | None,
        typer.Option("--on-dependency-failure", metavar="cancel|run",
                     help="When a dependency fails for good: cancel this job (default) or run it anyway."),
    ] = None,
    json_output: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Enqueue one job and print its id (with --unique-key, the live job's id if one exists).

    Example: pgqueue enqueue send-email --args '{"to": "a@example.com"}' --queue emails --priority high

    Example: pgqueue enqueue zip-exports --depends-on 41 --depends-on 42
    """
    payload = _parse_args(args) if args is not None else {}
    when = _parse_run_at(run_at) if run_at is not None else None
    if delay is not None and when is not None:
        usage_error("give --delay or --run-at, not both")
    if delay is not None and not 0 <= delay < math.inf:
        usage_error(f"--delay {delay:g} must be a number of seconds, 0 or more")
    app = App()
    # The options' own checks before connecting, as App.enqueue makes them (it repeats them): a
    # typo is a usage error and needs no database. The task's name and --args are checked there.
    with checking_options():
        check_enqueue_options(queue=queue, priority=priority, delay=delay, run_at=when,
                              max_attempts=max_attempts, unique_key=unique_key, tags=tag, group=group,
                              depends_on=depends_on, on_dependency_failure=on_dependency_failure)
    # --priority is text ("high", "7"); App.enqueue takes an int or a priority name (pgqueue.Priority).
    rank = None if priority is None else resolve_priority(priority)
    with open_session(dsn) as conn:
        # A task the CLI has never seen is fine: producers need not import the workers' code. But a
        # task that a started worker's code declares encrypt=True is encrypted as with --encrypt.
        # (A name the database cannot store is not looked up: App.enqueue refuses it with its own message.)
        declared = not encrypt and is_task_name(task) and JobStore(conn).task_is_encrypted(task)
        try:
            job_id = app.enqueue(
                conn, task, payload, queue=queue, priority=rank, delay=delay, run_at=when,
                max_attempts=max_attempts, unique_key=unique_key, encrypt=True if encrypt or declared else None,
                tags=tag, group=group,
                depends_on=depends_on, on_dependency_failure=on_dependency_failure,
            )
        except EncryptionKeyMissing as exc:
            if not declared:
                raise
            fail(f"{exc}; task {task!r} is declared encrypt=True by its workers (pgqueue.encrypted_tasks)")
    if json_output:
        print_json({"id": job_id})
    else:
        print(job_id)
