"""pgqueue.testing and its pytest plugin, as an application's test suite uses them: run with
pytester in a subprocess, so the plugin is loaded through its ``pytest11`` entry point exactly as
in a user's project."""

from __future__ import annotations

import textwrap

import pytest

APP = '''
import pgqueue

app = pgqueue.App()
sent = []


@app.task(name="send-welcome", queue="emails")
def send_welcome(job: pgqueue.Job, to: str) -> str:
    sent.append(to)
    if to.endswith("@invalid"):
        raise pgqueue.Discard("undeliverable")
    follow_up.enqueue(None, user=to)
    return f"sent to {to}"


@app.task(name="follow-up")
def follow_up(job: pgqueue.Job, user: str) -> None:
    pass


def sign_up(conn, email: str) -> int:
    conn.execute("INSERT INTO users (email) VALUES (%s)", [email])
    return send_welcome.options(priority="high").enqueue(conn, to=email)
'''

TESTS = '''
import psycopg
import pytest

import myapp


@pytest.fixture
def db(pgqueue_db):
    pgqueue_db.bind(myapp.app)
    with pgqueue_db.connect() as conn:
        conn.execute("CREATE TABLE users (email text)")
        conn.commit()
    return pgqueue_db


def test_sign_up_enqueues_a_welcome_email_and_draining_sends_it(db):
    with db.connect() as conn:
        job_id = myapp.sign_up(conn, "a@example.com")
        conn.commit()
    [job] = db.assert_enqueued("send-welcome", args={"to": "a@example.com"}, count=1)
    assert job.id == job_id and job.priority == 25 and job.queue == "emails"
    drained = db.drain(myapp.app)
    assert (drained.completed, drained.failed) == (2, 0)  # the follow-up a handler enqueued ran too
    assert myapp.sent == ["a@example.com"]
    db.assert_enqueued("send-welcome", state="completed")
    db.assert_enqueued("follow-up", args={"user": "a@example.com"}, state="completed")


def test_a_rolled_back_sign_up_enqueues_nothing(db):
    with db.connect() as conn:
        myapp.sign_up(conn, "b@example.com")
        conn.rollback()
    db.refute_enqueued("send-welcome")


def test_each_test_gets_a_fresh_database(db):
    assert db.enqueued() == []


def test_a_failing_job_is_counted(db):
    myapp.send_welcome.enqueue(None, to="x@invalid")
    assert db.drain(myapp.app).failed == 1
    db.assert_enqueued("send-welcome", state="failed")


def test_assert_enqueued_says_what_was_enqueued_instead(db):
    myapp.send_welcome.enqueue(None, to="c@example.com")
    db.assert_enqueued("send-welcome", args={"to": "someone-else"})
'''


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(myapp=textwrap.dedent(APP), test_myapp=textwrap.dedent(TESTS))
    return pytester


def test_the_plugin_gives_an_application_fresh_databases_drain_and_enqueue_assertions(
        project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", "-v")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines([
        "*test_assert_enqueued_says_what_was_enqueued_instead FAILED*",
        "*AssertionError: expected a job matching {'task': 'send-welcome', 'args': {'to': 'someone-else'}},"
        " found 0; enqueued: [[]('send-welcome', 'emails', 'available', {'to': 'c@example.com'})[]]*",
    ])


def test_the_plugin_works_under_xdist_with_one_template_build(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=4, failed=1)


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
