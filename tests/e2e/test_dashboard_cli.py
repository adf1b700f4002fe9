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
