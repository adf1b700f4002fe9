"""The typer application: global options, the command table, and the single error boundary.

Every command lives in its own module, named in :data:`COMMANDS` with the line ``pgqueue --help``
shows for it. A command's module is imported only when that command runs or shows its own help,
so ``pgqueue --help``, ``pgqueue --version`` and ``pgqueue worker`` (and each ``--processes``
child) never import the bench, alembic or the other commands' dependencies. Importing them all
up front took ``import pgqueue.cli`` to about 1.2 s.

To add a command: write its module (a function, or a ``typer.Typer`` for a group of commands),
then add its row to :data:`COMMANDS`; ``tests/unit/test_cli_commands.py`` checks that the row's
summary is the command's own first paragraph.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Annotated, Any

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup

from pgqueue import __version__
from pgqueue.cli._startup import pause_gc, resume_gc
from pgqueue.errors import PgqueueError

# Typer vendors click under a private module since 0.2x, so click's Command, Context and
# HelpFormatter have no public name that works on every typer this package supports: the few
# signatures below that take or return them say Any.


@dataclass(frozen=True)
class CommandEntry:
    """One ``pgqueue`` command: where it lives and how ``pgqueue --help`` lists it."""

    target: str
    """``"module:attribute"``: a command function, or a ``typer.Typer`` holding a group of commands."""
    summary: str
    """The command's first help paragraph, shown by ``pgqueue --help`` without importing its module."""
    panel: str


_START = "Start here"
_OPERATE = "Jobs, queues and schedules"
_COMPLIANCE = "Compliance"
_TOOLS = "Tools"

COMMANDS: dict[str, CommandEntry] = {
    "demo": CommandEntry(
        "pgqueue.cli.demo:demo",
        "Run the whole system once: migrate, enqueue sample jobs, work them with a live view, summarise.",
        _START),
    "migrate": CommandEntry(
        "pgqueue.cli.migrate:migrate",
        "Create or upgrade the pgqueue schema (safe to run from several deploys at once).",
        _START),
    "worker": CommandEntry(
        "pgqueue.cli.worker:worker",
        "Run workers until SIGTERM/SIGINT: stop claiming, finish running jobs within the grace period, "
        "release the rest.",
        _START),
    "scheduler": CommandEntry(
        "pgqueue.cli.scheduler:scheduler",
        "Insert due cron jobs until SIGTERM/SIGINT (then exit 0).",
        _START),
    "enqueue": CommandEntry(
        "pgqueue.cli.enqueue:enqueue",
        "Enqueue one job and print its id (with --unique-key, the live job's id if one exists).",
        _OPERATE),
    "jobs": CommandEntry(
        "pgqueue.cli.jobs:app",
        "Inspect and manage jobs: list, show, retry, cancel, delete.",
        _OPERATE),
    "workflows": CommandEntry(
        "pgqueue.cli.workflows:app",
        "Workflows (chains and groups): show, cancel, retry.",
        _OPERATE),
    "queues": CommandEntry(
        "pgqueue.cli.queues:app",
        "Per-queue counts and controls: list, pause, resume, purge, set limits.",
        _OPERATE),
    "breakers": CommandEntry(
        "pgqueue.cli.breakers:app",
        "Circuit breakers of tasks: list their state, reset one by hand.",
        _OPERATE),
    "tasks": CommandEntry(
        "pgqueue.cli.tasks:app",
        "Tasks with flow limits (declared on @app.task, stored by workers at start): list.",
        _OPERATE),
    "schedules": CommandEntry(
        "pgqueue.cli.schedules:app",
        "Cron schedules: list, add, remove, pause, resume (code schedules are synced by `pgqueue scheduler`).",
        _OPERATE),
    "stats": CommandEntry(
        "pgqueue.cli.stats:stats",
        "Show jobs per queue and state (with totals), the workers, and PostgreSQL's notification queue usage.",
        _OPERATE),
    "health": CommandEntry(
        "pgqueue.cli.stats:health",
        "Check that pgqueue is healthy; exit 0 if so, 2 if not (for probes and monitoring).",
        _OPERATE),
    "dashboard": CommandEntry(
        "pgqueue.cli.dashboard:dashboard",
        "Serve the dashboard (pages, JSON API under /api/, /metrics, /healthz, /readyz) until Ctrl-C.",
        _OPERATE),
    "prune": CommandEntry(
        "pgqueue.cli.prune:prune",
        "Delete finished jobs older than the retention now, in batches, each recorded in the audit trail.",
        _OPERATE),
    "audit": CommandEntry(
        "pgqueue.cli.audit:app",
        "The tamper-evident audit trail: show a job's events, verify the trail.",
        _COMPLIANCE),
    "keys": CommandEntry(
        "pgqueue.cli.keys:app",
        "Encryption keys: generate one, rotate stored payloads to the newest.",
        _COMPLIANCE),
    "embedded": CommandEntry(
        "pgqueue.cli.embedded:app",
        "Manage the embedded PostgreSQL server used when no DSN is configured (data under PGQUEUE_HOME).",
        _TOOLS),
    "bench": CommandEntry(
        "pgqueue.cli.bench:bench",
        "Measure enqueue and processing throughput, wake-up latency, backlog and churn behaviour, and "
        "PostgreSQL's own ceiling on the same server.",
        _TOOLS),
    "soak": CommandEntry(
        "pgqueue.cli.soak:soak",
        "Run WORKERS `pgqueue worker` and SCHEDULERS `pgqueue scheduler` processes while JOBS jobs are enqueued "
        "over MINUTES and a seeded chaos loop SIGKILLs workers and schedulers (then restarts them), terminates "
        "pgqueue's backends and, with --private-server, restarts the database. Then drain, stop, and check the "
        "books. Exit 0 when every figure holds, 1 otherwise.",
        _TOOLS),
}


def as_paragraphs(text: str | None) -> str | None:
    """Join the hard-wrapped lines of each paragraph, so help is reflowed to the terminal's width.

    Docstrings wrap at the source's line length; typer's rich help keeps those line breaks after
    the first paragraph, which made help texts wrap raggedly. Blank lines still separate
    paragraphs, and a paragraph that starts with ``\\b`` (click's "keep my line breaks") is kept.
    """
    if not text:
        return text
    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(text))
    return "\n\n".join(
        p if p.startswith("\b") else " ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def load_command(name: str) -> Any:
    """Import the module of command ``name`` and build its click command, as ``add_typer``/``command`` did."""
    entry = COMMANDS[name]
    module_name, _, attribute = entry.target.partition(":")
    target = getattr(importlib.import_module(module_name), attribute)
    holder = typer.Typer(add_completion=False)
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)  # the holder is then a group, whose one member is the command
        command = typer.main.get_command(holder).commands[name]  # type: ignore[attr-defined]
    else:
        holder.command(name)(target)
        command = typer.main.get_command(holder)
    _reflow(command)
    return command


def _reflow(command: Any) -> None:
    command.help = as_paragraphs(command.help)
    command.short_help = as_paragraphs(command.short_help)
    for child in getattr(command, "commands", {}).values():
        _reflow(child)


class _Commands(MutableMapping[str, Any]):
    """The root group's commands: each built from :data:`COMMANDS` on first lookup.

    While the root help is printed (``listing``), a command not loaded yet is stood in for by a
    command that carries only its summary: listing every command must not import every module.
    Typer's "did you mean" suggestions read this mapping's keys, so they cover every command.
    """

    def __init__(self, eager: MutableMapping[str, Any]) -> None:
        self._loaded = dict(eager)
        self.listing = False

    def __getitem__(self, name: str) -> Any:
        if name in self._loaded:
            return self._loaded[name]
        entry = COMMANDS[name]  # KeyError for an unknown name, as a dict would
        if self.listing:
            return TyperCommand(name=name, help=entry.summary, rich_help_panel=entry.panel)
        self._loaded[name] = load_command(name)
        return self._loaded[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        yield from self._loaded
        yield from (name for name in COMMANDS if name not in self._loaded)

    def __len__(self) -> int:
        return len(self._loaded.keys() | COMMANDS.keys())


class _LazyGroup(TyperGroup):
    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = self._lazy = _Commands(self.commands)

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._lazy.listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._lazy.listing = False


app = typer.Typer(
    cls=_LazyGroup,
    name="pgqueue",
    help="pgqueue: a PostgreSQL-native job queue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        print(f"pgqueue {__version__}")
        raise typer.Exit(0)


_LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


@app.callback()
def _root(
    ctx: typer.Context,
    log_format: Annotated[
        str, typer.Option("--log-format", envvar="PGQUEUE_LOG_FORMAT", help="console or json")
    ] = "console",
    log_level: Annotated[
        str, typer.Option("--log-level", envvar="PGQUEUE_LOG_LEVEL",
                          help="debug, info, warning or error (a worker logs every job at info)")
    ] = "info",
    home: Annotated[str | None, typer.Option(
        "--home", help="Where the embedded server keeps its data and state (PGQUEUE_HOME).")] = None,
    encrypt_all: Annotated[bool | None, typer.Option(
        "--encrypt-all/--no-encrypt-all", show_default=False,
        help="Compliance mode: encrypt every job this command enqueues, and the result and error of every job "
             "it runs (PGQUEUE_ENCRYPT_ALL; keys from PGQUEUE_ENCRYPTION_KEYS).")] = None,
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version, help="Print pgqueue's version and exit.")] = False,
) -> None:
    # Written to the environment rather than passed down: every command, the embedded server's
    # resolution and the children of `worker --processes` read their settings from there, and the
    # variable's own checks (one line naming it) stay the only ones.
    if home is not None:
        if not home.strip():
            print("pgqueue: error: --home must not be empty", file=sys.stderr)
            raise typer.Exit(2)
        os.environ["PGQUEUE_HOME"] = home
    if encrypt_all is not None:
        os.environ["PGQUEUE_ENCRYPT_ALL"] = "1" if encrypt_all else "0"
    if log_format not in {"console", "json"}:
        print(f"pgqueue: error: --log-format {log_format!r} must be 'console' or 'json'", file=sys.stderr)
        raise typer.Exit(2)
    level = _LOG_LEVELS.get(log_level.lower())
    if level is None:
        print(f"pgqueue: error: --log-level {log_level!r} must be one of {', '.join(_LOG_LEVELS)}", file=sys.stderr)
        raise typer.Exit(2)
    from pgqueue.cli._logging import configure_logging  # structlog: only once a command runs

    configure_logging(log_format, level)
    if ctx.invoked_subcommand != "worker":  # a worker resumes it once its own code is imported
        resume_gc()


def _run() -> None:
    try:
        # Not standalone: click's own rendering of a usage error is a usage line, a hint and a
        # boxed message; the CLI prints one line instead (see _usage_error).
        code = app(standalone_mode=False)
    except Exception as exc:
        if _is_click_error(exc):
            _usage_error(exc)
        if "psycopg" not in sys.modules:
            raise  # no command touched the database, so this is no database error
        # The data layer owns the driver and its one error policy: a database failure becomes its
        # typed error (e.g. DatabaseUnavailable), anything else goes on unchanged.
        from pgqueue._db.errors import translate_errors

        with translate_errors():
            raise
    # A command that returned, or typer.Exit (--help, --version, a command's exit code).
    sys.exit(code if isinstance(code, int) else 0)


def _is_click_error(exc: BaseException) -> bool:
    # By name: click is vendored inside typer since 0.2x (see the note at the top), a package of
    # its own before; either way these are the classes its parser and prompts raise.
    return any(cls.__name__ in ("ClickException", "Abort") for cls in type(exc).__mro__)


def _usage_error(exc: Exception) -> None:
    """Exit as click would for ``exc`` (a bad option value, an unknown option or command, an
    aborted prompt), but with one line on stderr."""
    from pgqueue.cli._context import one_line_for_terminal

    names = {cls.__name__ for cls in type(exc).__mro__}
    if "NoArgsIsHelpError" in names:  # a bare group: typer has printed its help already
        sys.exit(2)
    if "Abort" in names:  # Ctrl-D or Ctrl-C at a prompt
        print("pgqueue: error: aborted", file=sys.stderr)
        sys.exit(1)
    message = exc.format_message()  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    if "UsageError" in names and ctx is not None:
        message += f" (see `{ctx.command_path} --help`)"
    print(f"pgqueue: error: {one_line_for_terminal(message)}", file=sys.stderr)
    sys.exit(int(getattr(exc, "exit_code", 2)))


def main() -> None:
    """Entry point of the ``pgqueue`` script: user errors become one line and exit 1."""
    from pgqueue.cli._context import one_line_for_terminal

    _install_crash_hooks()
    pause_gc()  # until the command line is parsed: see pgqueue.cli._startup
    try:
        _run()
    except PgqueueError as exc:
        print(f"pgqueue: error: {one_line_for_terminal(str(exc))}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the CLI never shows a traceback (it may quote secrets or job data)
        print(f"pgqueue: error: {one_line_for_terminal(_crash_line(exc))}", file=sys.stderr)
        sys.exit(1)
    finally:
        resume_gc()  # a usage error or --help ended the command before it resumed


def run_guarded(command: Callable[[], int]) -> int:
    """Run ``command`` behind :func:`main`'s error boundary and return the exit code instead of exiting.

    For a command's code that runs outside typer: the child a ``worker --processes N`` supervisor forks.
    """
    try:
        try:
            return command()
        except typer.Exit as exc:
            return int(exc.exit_code)
        except Exception:
            if "psycopg" not in sys.modules:
                raise
            from pgqueue._db.errors import translate_errors

            with translate_errors():
                raise
    except PgqueueError as exc:
        from pgqueue.cli._context import one_line_for_terminal

        print(f"pgqueue: error: {one_line_for_terminal(str(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - as in main(): never a traceback
        from pgqueue.cli._context import one_line_for_terminal

        print(f"pgqueue: error: {one_line_for_terminal(_crash_line(exc))}", file=sys.stderr)
        return 1


def _crash_line(exc: BaseException) -> str:
    """One line for an error nobody planned for: its type and where it was raised, and its message
    only when the type is a plain ValueError/TypeError (bad input). Messages of other errors may
    quote a job's payload."""
    from pgqueue._humanize import raised_at

    where = raised_at(exc)
    if type(exc) in (ValueError, TypeError):
        return f"{exc} ({type(exc).__name__}{where})"
    return f"unexpected {type(exc).__name__}{where} (a bug in pgqueue: please report it)"


#: Where pgqueue's own modules live: their warnings carry no job data and keep their text.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _install_crash_hooks() -> None:
    """An exception no code caught, in any thread, prints one line: never a traceback, which could
    carry a decrypted payload or a password in its messages."""
    import threading

    def excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
            return
        from pgqueue.cli._context import one_line_for_terminal

        print(f"pgqueue: error: {one_line_for_terminal(_crash_line(exc))}", file=sys.stderr)

    def thread_excepthook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None or isinstance(args.exc_value, SystemExit):
            return
        from pgqueue._humanize import raised_at
        from pgqueue.cli._context import one_line_for_terminal

        name = args.thread.name if args.thread is not None else "?"
        # Never the message, whatever the type: a thread's error is not bad command-line input, and
        # the thread may be a handler's own, whose ValueError quotes the decrypted args of its job.
        error = args.exc_value
        print(f"pgqueue: error in thread {name}: uncaught {one_line_for_terminal(type(error).__name__)}"
              f"{one_line_for_terminal(raised_at(error))} (message not shown: it may quote job data)",
              file=sys.stderr)

    def showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    file: Any = None, line: str | None = None) -> None:
        from pgqueue.cli._context import one_line_for_terminal

        # A handler's warnings.warn(f"... {ssn}") printed its text, job data included, to stderr:
        # shown like a thread's uncaught error, by type and place only. pgqueue's own keep their text.
        where = f"{filename}:{lineno}"
        text = str(message) if filename.startswith(_PACKAGE_DIR) else "message not shown: it may quote job data"
        print(f"pgqueue: warning: {one_line_for_terminal(category.__name__)} at {one_line_for_terminal(where)} "
              f"({one_line_for_terminal(text)})", file=sys.stderr if file is None else file)

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook
    warnings.showwarning = showwarning
