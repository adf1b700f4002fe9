"""The typing contract of typed tasks, checked by running mypy.

``typed_tasks_ok.py`` must type-check cleanly (its ``assert_type`` calls pin the inferred types);
``typed_tasks_wrong.py`` must produce exactly the errors its ``# E: <code>`` comments announce, line
for line, so a Task that stopped checking its handler's signature fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
_ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")


def _run_mypy(path: Path) -> tuple[str, int]:
    stdout, stderr, status = mypy_api.run([
        "--config-file", str(ROOT / "pyproject.toml"), "--no-incremental", "--cache-dir=/dev/null",
        "--show-error-codes", "--no-pretty", "--no-error-summary", str(path),
    ])
    assert not stderr, stderr
    return stdout, status


def _expected_errors(path: Path) -> set[tuple[int, str]]:
    expected = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        marker = re.search(r"# E: ([a-z-]+(?:, [a-z-]+)*)$", line)
        if marker:
            expected |= {(number, code) for code in marker.group(1).split(", ")}
    return expected


def test_correct_calls_of_typed_tasks_type_check_with_the_expected_types() -> None:
    stdout, status = _run_mypy(HERE / "typed_tasks_ok.py")
    assert status == 0, stdout


def test_wrong_calls_of_typed_tasks_are_each_rejected_by_mypy() -> None:
    path = HERE / "typed_tasks_wrong.py"
    stdout, status = _run_mypy(path)
    found = set()
    for line in stdout.splitlines():
        match = _ERROR.match(line)
        if match and Path(match["path"]).name == path.name:
            found.add((int(match["line"]), match["code"]))
    expected = _expected_errors(path)
    assert len(expected) >= 10
    assert status == 1
    assert found == expected, stdout
