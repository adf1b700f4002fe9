"""pgqueue.testing and its pytest plugin, as an application's test suite uses them: run with
pytester in a subprocess, so the plugin is loaded through its ``pytest11`` entry point exactly as
in a user's project."""

from __future__ import annotations

import re

import pytest

from tests.helpers import REPO_ROOT

GUIDE = REPO_ROOT / "docs" / "guide" / "testing.md"


def _guide_file(first_line: str) -> str:
    """The code block of docs/guide/testing.md that starts with ``first_line``."""
    blocks: list[str] = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    for block in blocks:
        if block.startswith(first_line):
            return block
    raise AssertionError(f"no python block starting with {first_line!r} in {GUIDE}")


FAILING = """
import myapp


def test_assert_enqueued_says_what_was_enqueued_instead(pgqueue_db):
    pgqueue_db.bind(myapp.app)
    myapp.send_welcome.enqueue(None, to="c@example.com")
    pgqueue_db.assert_enqueued("send-welcome", args={"to": "someone-else"})
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """The worked example of docs/guide/testing.md, as an application's project."""
    pytester.makepyfile(myapp=_guide_file("# myapp.py"), test_myapp=_guide_file("# test_myapp.py"))
    return pytester


def test_the_guides_worked_example_passes_with_the_plugin(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=3)


def test_the_plugin_works_under_xdist(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=3)


def test_a_failed_enqueue_assertion_lists_what_was_enqueued_instead(project: pytest.Pytester) -> None:
    project.makepyfile(test_failing=FAILING)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "test_failing.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*AssertionError: expected a job matching {'task': 'send-welcome', 'args': {'to': 'someone-else'}},"
        " found 0; enqueued: [[]('send-welcome', 'emails', 'available', {'to': 'c@example.com'})[]]*",
    ])


def test_fresh_database_works_without_pytest_fixtures(pgqueue_server_dsn: str) -> None:
    from pgqueue import App, Job
    from pgqueue.errors import PgqueueError
    from pgqueue.testing import fresh_database

    app = App("postgresql://nobody@127.0.0.1:1/unused")

    @app.task(name="double")
    def double(job: Job, n: int) -> int:
        return n * 2

    with fresh_database(pgqueue_server_dsn) as db:
        db.bind(app)
        job_id = double.enqueue(None, n=21)
        assert db.drain(app).completed == 1
        assert app.result(None, job_id, timeout=5) == 42
        dsn = db.dsn
    assert app._dsn == "postgresql://nobody@127.0.0.1:1/unused"  # given back
    with pytest.raises(PgqueueError, match="does not exist"):  # dropped
        App(dsn).enqueue(None, "double", {"n": 1})


def test_fresh_database_takes_the_sqlalchemy_form_of_the_server_dsn(pgqueue_server_dsn: str) -> None:
    # Every DSN pgqueue takes may be written postgresql+psycopg://; fresh_database(server) handed
    # it to psycopg as it was, which refused to parse it.
    from pgqueue import App
    from pgqueue.testing import fresh_database
    from tests.helpers import sqlalchemy_form

    with fresh_database(sqlalchemy_form(pgqueue_server_dsn)) as db:
        job_id = App(db.dsn).enqueue(None, "t", {})
        assert [job.id for job in db.enqueued("t")] == [job_id]
