"""`pgqueue dashboard` as a process: what it refuses before it serves anything, and what it serves."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from pgqueue import App
from tests.helpers import wait_until
from tests.plugins.processes import RunCli, SpawnPgqueue


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_token_counts_as_none_so_a_public_host_is_refused(run_cli: RunCli, blank: str) -> None:
    result = run_cli(["dashboard", "--host", "0.0.0.0", "--port", "1"],
                     dsn="postgresql://root@127.0.0.1:1/unused",
                     env={"PGQUEUE_ADMIN_TOKEN": blank, "PGQUEUE_READ_TOKEN": blank})

    assert result.returncode == 1
    assert "refusing to listen on '0.0.0.0' without a token" in result.stderr


@pytest.mark.parametrize(("admin", "read", "expected"), [
    ("hunter2-hunter2", "", "PGQUEUE_ADMIN_TOKEN is too short: a token needs at least 16 characters; generate one "
                           'with python -c "import secrets; print(secrets.token_urlsafe(32))"'),
    ("admin-secret-token", "readtoken", "PGQUEUE_READ_TOKEN is too short"),
    ("admin-secret-token", "admin-secret-token", "PGQUEUE_ADMIN_TOKEN and PGQUEUE_READ_TOKEN must differ"),
])
def test_weak_tokens_are_refused_at_start_in_one_line_that_never_quotes_them(
        run_cli: RunCli, admin: str, read: str, expected: str) -> None:
    result = run_cli(["dashboard", "--host", "127.0.0.1", "--port", "1"],
                     dsn="postgresql://root@127.0.0.1:1/unused",
                     env={"PGQUEUE_ADMIN_TOKEN": admin, "PGQUEUE_READ_TOKEN": read})

    assert result.returncode == 1
    assert result.stderr.startswith(f"pgqueue: error: {expected}"), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert admin not in result.stderr
    assert not read or read not in result.stderr


ALICE_TOKEN = "alice-secret-token-0001"
BOB_TOKEN = "bob-secret-token-000002"


def write_users(directory: Path, text: str, mode: int) -> Path:
    path = directory / "dashboard-users"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(("text", "mode", "option", "expected"), [
    (f"alice admin {ALICE_TOKEN}\nbob reader {BOB_TOKEN}\n", 0o600, False, ", line 2: the role must be admin or read"),
    (f"alice admin {ALICE_TOKEN}\n", 0o666, False, ": other users may write it (mode 0666)"),
    ("alice admin 15-characters!!\n", 0o600, True, ", line 1: the token is too short"),
], ids=["role", "writable", "option"])
def test_a_bad_users_file_is_refused_at_start_in_one_line_that_never_quotes_a_token(
        run_cli: RunCli, tmp_path: Path, text: str, mode: int, option: bool, expected: str) -> None:
    path = write_users(tmp_path, text, mode)
    given = (["--users-file", str(path)], {}) if option else ([], {"PGQUEUE_DASHBOARD_USERS_FILE": str(path)})

    result = run_cli(["dashboard", "--host", "0.0.0.0", "--port", "1", *given[0]],
                     dsn="postgresql://root@127.0.0.1:1/unused", env=given[1])

    assert result.returncode == 1  # as a weak PGQUEUE_ADMIN_TOKEN is
    assert result.stderr.startswith(f"pgqueue: error: users file {path}{expected}"), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    for token in (ALICE_TOKEN, BOB_TOKEN, "15-characters!!"):
        assert token not in result.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def call(port: int, method: str, path: str, token: str) -> int | None:
    """The status of ``method path`` as ``token``'s holder, or None while nothing answers."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - http://127.0.0.1 only
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return refused.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def test_the_dashboard_serves_the_users_file_on_any_address_and_audits_each_users_actions_by_name(
        spawn_pgqueue: SpawnPgqueue, dsn: str, tmp_path: Path) -> None:
    # 0644, as a Kubernetes secret is mounted: served, with a warning.
    path = write_users(tmp_path, f"# operators\nalice admin {ALICE_TOKEN}\nbob read {BOB_TOKEN}\n", 0o644)
    with psycopg.connect(dsn, autocommit=True) as db:
        alices, bobs = (App().enqueue(db, "send", {}, queue="emails") for _ in range(2))
        port = free_port()
        # No PGQUEUE_ADMIN_TOKEN: the users file alone is auth enough for a public --host.
        dashboard = spawn_pgqueue("dashboard", "--host", "0.0.0.0", "--port", str(port), dsn=dsn,
                                  env={"PGQUEUE_DASHBOARD_USERS_FILE": str(path)})

        wait_until(lambda: call(port, "GET", "/api/queues", BOB_TOKEN) == 200, timeout=60,
                   message=dashboard.describe())
        statuses = [call(port, "POST", f"/api/jobs/{alices}/cancel", ALICE_TOKEN),
                    call(port, "POST", f"/api/jobs/{bobs}/cancel", BOB_TOKEN),
                    call(port, "GET", "/api/queues", "not-a-configured-token")]
        rows = db.execute("SELECT job_id, actor, detail ->> 'source' FROM pgqueue.job_events "
                          "WHERE event = 'cancelled'").fetchall()
        dashboard.stop()

    assert statuses == [200, 403, 401]
    assert rows == [(alices, "alice", "web")]
    assert "(bearer tokens / login, 2 named users)" in dashboard.stderr()
    assert [entry["mode"] for entry in dashboard.log_events("web.users_file_readable")] == ["0644"]
    assert ALICE_TOKEN not in dashboard.stderr()


def test_an_application_error_is_logged_once_as_json_not_again_as_uvicorns_plain_traceback(
        spawn_pgqueue: SpawnPgqueue, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as db:
        job_id = App().enqueue(db, "send", {}, queue="emails")
        # A row the jobs page cannot render (last_error an array, set by hand): a bug's stand-in.
        db.execute("UPDATE pgqueue.jobs SET state = 'failed', attempt = 1, finished_at = now(), "
                   "last_error = '[1]'::jsonb WHERE id = %s", [job_id])
    port = free_port()
    dashboard = spawn_pgqueue("dashboard", "--port", str(port), dsn=dsn,
                              env={"PGQUEUE_ADMIN_TOKEN": "admin-secret-token"})
    wait_until(lambda: call(port, "GET", "/api/queues", "admin-secret-token") == 200, timeout=60,
               message=dashboard.describe())

    assert call(port, "GET", "/jobs?state=failed", "admin-secret-token") == 500
    dashboard.stop()
    logged = dashboard.log_events("web.internal_error")
    assert [entry["path"] for entry in logged] == ["/jobs"]
    assert "Traceback" in logged[0]["exception"]
    # uvicorn's own copy is plain text (not the JSON asked for) and not scrubbed of passwords.
    lines = [line for line in dashboard.stderr().splitlines() if line.strip()]
    assert [line for line in lines if not line.startswith(("{", "pgqueue dashboard on "))] == [], lines
