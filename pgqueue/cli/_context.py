"""What every command shares: the --dsn option, DSN resolution, and one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer

from pgqueue._humanize import printable
from pgqueue.errors import PgqueueError
from pgqueue.settings import ResolvedDSN, redact_dsn, resolve_dsn, scrub_secrets

DsnOption = Annotated[
    str | None,
    typer.Option("--dsn", help="Database URL (else PGQUEUE_DSN, DATABASE_URL, then the embedded server).",
                 show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line on stderr and exit non-zero: the CLI's only way to report a user error."""
    print(f"pgqueue: error: {one_line_for_terminal(message)}", file=sys.stderr)
    raise typer.Exit(code)


def usage_error(message: str) -> NoReturn:
    """A command line that cannot be used as given: an option's value out of range or malformed,
    or options that exclude each other. One line on stderr and exit 2, as for click's own checks
    of option values (``--port 0``, ``--limit abc``); errors the database reports exit 1."""
    fail(message, code=2)


@contextmanager
def checking_options(*errors: type[PgqueueError]) -> Iterator[None]:
    """Run a command's checks of its option values: the typed error one raises (InvalidQueueName,
    InvalidCron, ...) is a usage error (:func:`usage_error`).

    With no ``errors``, any :class:`PgqueueError`: for checks that touch no database. Around a call
    that does, name only the errors it raises for its arguments before it reads anything (e.g.
    ``InvalidFilter`` of :func:`pgqueue.admin.list_jobs`), so a database failure still exits 1.
    """
    caught: tuple[type[PgqueueError], ...] = errors or (PgqueueError,)
    try:
        yield
    except caught as exc:
        usage_error(str(exc))


def one_line_for_terminal(message: str) -> str:
    """An error message as the CLI prints it: no password, no raw control characters."""
    return printable(scrub_secrets(message), multiline=False)


def resolve(dsn: str | None) -> str:
    """Resolve the DSN for a command; say on stderr when the embedded server is used."""
    try:
        resolved: ResolvedDSN = resolve_dsn(dsn)
    except PgqueueError as exc:
        fail(str(exc))
    if resolved.embedded:
        print(f"pgqueue: no DSN configured, using the embedded PostgreSQL server ({redact_dsn(resolved.dsn)})",
              file=sys.stderr)
    return resolved.dsn
