"""``@pytest.mark.system_binary("pgbouncer")``: the test needs a program that ``pip install`` cannot
provide (PgBouncer, Chromium), so the README's test command, which needs only Python, leaves it out.

Such tests are deselected (not skipped) unless their programs are turned on with
``--system-binaries=pgbouncer,chromium`` or ``PGQUEUE_TEST_SYSTEM_BINARIES=pgbouncer,chromium``;
one line at the end of the run says what was left out and how to turn it on. ``.ci/run`` installs
the programs and turns them on. Turning on a program that is not installed is a usage error, and a
selected test finds its program with :func:`system_binary`, which fails (never skips) without it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

OPTION = "--system-binaries"
ENV = "PGQUEUE_TEST_SYSTEM_BINARIES"
# How to install each program on Debian, for the messages.
INSTALL = {
    "pgbouncer": "apt-get install -y pgbouncer",
    "chromium": "apt-get install -y chromium",
    "node": "apt-get install -y nodejs",
}
# Debian installs pgbouncer in /usr/sbin, which is often not on a non-root user's PATH.
_EXTRA_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/bin")
_LEFT_OUT = pytest.StashKey[dict[str, set[str]]]()
_WORKER_OUTPUT = "system_binaries_left_out"


def find_system_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found is not None:
        return found
    return next((str(Path(d) / name) for d in _EXTRA_DIRS if os.access(Path(d) / name, os.X_OK)), None)


def system_binary(name: str) -> str:
    """The path of ``name``, for a test marked ``system_binary(name)``; fails the test if it is missing."""
    found = find_system_binary(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `{INSTALL.get(name, f'apt-get install -y {name}')}`")
    return found


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        OPTION, default=None, metavar="NAME[,NAME...]",
        help=f"also run the tests marked system_binary(NAME) for these programs, which must be installed "
             f"(default: ${ENV}, else none: those tests are deselected)")


def _enabled(config: pytest.Config) -> set[str]:
    raw = config.getoption(OPTION) or os.environ.get(ENV, "")
    return {name.strip() for name in str(raw).split(",") if name.strip()}


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_LEFT_OUT] = {}
    missing = sorted(name for name in _enabled(config) if find_system_binary(name) is None)
    if missing:
        hints = "; ".join(f"{name}: `{INSTALL.get(name, f'apt-get install -y {name}')}`" for name in missing)
        raise pytest.UsageError(f"{OPTION} turns on programs that are not installed ({hints})")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    enabled = _enabled(config)
    left_out = config.stash[_LEFT_OUT]
    keep, deselected = [], []
    for item in items:
        needed = [str(arg) for marker in item.iter_markers("system_binary") for arg in marker.args]
        if any(mark.args == () for mark in item.iter_markers("system_binary")):
            raise pytest.UsageError(f"{item.nodeid}: system_binary needs the program's name, e.g. "
                                    f'system_binary("pgbouncer")')
        missing = [name for name in needed if name not in enabled]
        if not missing:
            keep.append(item)
            continue
        deselected.append(item)
        for name in missing:
            left_out.setdefault(name, set()).add(item.nodeid)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = keep
    worker_output = getattr(config, "workeroutput", None)
    if worker_output is not None:  # an xdist worker: the controller prints the note
        worker_output[_WORKER_OUTPUT] = {name: sorted(ids) for name, ids in left_out.items()}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """xdist controller: gather what each worker left out (they all collect the same tests)."""
    output = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT, {})
    config: pytest.Config = node.config  # type: ignore[attr-defined]
    left_out = config.stash[_LEFT_OUT]
    for name, ids in output.items():
        left_out.setdefault(name, set()).update(ids)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    left_out = config.stash.get(_LEFT_OUT, {})
    if not left_out or getattr(config, "workeroutput", None) is not None:
        return
    names = sorted(left_out)
    counts = ", ".join(f"{len(left_out[name])} need {name}" for name in names)
    terminalreporter.write_line(
        f"system binaries: deselected tests ({counts}); install them and add {OPTION}={','.join(names)} "
        f"(or {ENV}) to run them, as .ci/run does")
