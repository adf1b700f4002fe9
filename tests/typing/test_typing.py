"""The typing contract of typed tasks, checked by running mypy.

``typed_tasks_ok.py`` must type-check cleanly (its ``assert_type`` calls pin the inferred types);
``typed_tasks_wrong.py`` must produce exactly the errors its ``# E: <code>`` comments announce, line
for line, so a Task that stopped checking its handler's signature fails here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from mypy import api as mypy_api

from tests.plugins.system_binaries import system_binary

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


def _pyright() -> str:
    """The pyright command (the dev extra's pip wrapper, which bundles pyright and runs it on node)."""
    system_binary("node")
    pyright = shutil.which("pyright")
    assert pyright is not None, "pyright is missing: pip install -e '.[dev]'"
    return pyright


@pytest.mark.system_binary("node")
def test_pyright_accepts_the_correct_calls_and_rejects_each_wrong_one() -> None:
    pyright = _pyright()
    wrong = HERE / "typed_tasks_wrong.py"
    run = subprocess.run([pyright, "--outputjson", str(HERE / "typed_tasks_ok.py"), str(wrong)],
                         capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    report = json.loads(run.stdout)
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    # Lines are 0-based in pyright's report.
    found = {(Path(d["file"]).name, d["range"]["start"]["line"] + 1) for d in errors}
    expected = {(wrong.name, line) for line, _code in _expected_errors(wrong)}
    assert found == expected, json.dumps(errors, indent=1)[:4000]
