"""The command table of the ``pgqueue`` CLI: lazy registration, --version, help as paragraphs. No database."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import pgqueue
from pgqueue.cli.main import COMMANDS, as_paragraphs, load_command

# What a command's module may pull in but `pgqueue --help` / `--version` must not: the driver,
# the migration tooling, and the modules behind the commands themselves.
HEAVY = ("psycopg", "sqlalchemy", "alembic", "cryptography", "structlog", "pgqueue._bench", "pgqueue.app")


def _first_paragraph(help_text: str | None) -> str:
    return inspect.cleandoc(help_text or "").split("\n\n")[0]


def _walk(command: Any, path: str) -> Iterator[tuple[str, Any]]:
    yield path, command
    for name, child in getattr(command, "commands", {}).items():
        yield from _walk(child, f"{path} {name}")


def _modules_after(argv: list[str], exit_code: int = 0) -> tuple[str, set[str]]:
    """Run ``pgqueue ARGV`` in a fresh interpreter: its stdout, and every module it had imported."""
    code = (
        "import sys\n"
        "from pgqueue.cli import main\n"
        f"sys.argv = {['pgqueue', *argv]!r}\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    code = exc.code or 0\n"
        "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "COLUMNS": "120"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                          check=False)
    assert done.returncode == exit_code, done.stderr[-2000:]
    return done.stdout, set(done.stderr.split())


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_is_listed_with_its_own_first_help_paragraph(name: str) -> None:
    command = load_command(name)

    assert command.name == name
    assert COMMANDS[name].summary == _first_paragraph(command.help)


# With no arguments the root help is printed and the exit code is click's usage error, 2, as before.
@pytest.mark.parametrize(("argv", "exit_code"), [(["--help"], 0), (["--version"], 0), ([], 2)],
                         ids=["help", "version", "no-args"])
def test_help_and_version_import_no_command_module_and_no_heavy_dependency(argv: list[str], exit_code: int) -> None:
    _, modules = _modules_after(argv, exit_code)

    command_modules = {target.partition(":")[0] for target in (entry.target for entry in COMMANDS.values())}
    assert not modules & command_modules
    assert not {m for m in modules for heavy in HEAVY if m == heavy or m.startswith(f"{heavy}.")}


def test_help_lists_every_command_with_its_summary() -> None:
    out, _ = _modules_after(["--help"])

    for name in COMMANDS:
        assert f" {name} " in out


def test_a_command_imports_only_its_own_module() -> None:
    _, modules = _modules_after(["migrate", "--help"])

    assert "pgqueue.cli.migrate" in modules
    others = {entry.target.partition(":")[0] for name, entry in COMMANDS.items() if name != "migrate"}
    assert not modules & others


def test_version_prints_the_package_version() -> None:
    done = subprocess.run([sys.executable, "-m", "pgqueue", "--version"], capture_output=True, text=True,
                          timeout=60, check=False)

    assert (done.returncode, done.stdout, done.stderr) == (0, f"pgqueue {pgqueue.__version__}\n", "")


def test_every_help_text_is_reflowed_into_paragraphs() -> None:
    seen = 0
    for name in COMMANDS:
        for path, command in _walk(load_command(name), name):
            for paragraph in (command.help or "").split("\n\n"):
                assert "\n" not in paragraph, f"pgqueue {path}: a paragraph keeps its line breaks"
            seen += 1

    assert seen > len(COMMANDS)  # the groups' subcommands were walked too


def test_as_paragraphs_joins_lines_and_keeps_paragraphs_and_verbatim_blocks() -> None:
    text = """First line
    goes on.

    Second paragraph
      indented line.

    \b
    kept
    as is"""

    assert as_paragraphs(text) == "First line goes on.\n\nSecond paragraph indented line.\n\n\b\nkept\nas is"
