"""`pgqueue dashboard` as a process: what it refuses before it serves anything."""

from __future__ import annotations

import pytest

from tests.plugins.processes import RunCli


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
