"""The soak's child processes: ``pgqueue worker`` and ``pgqueue scheduler``, each the leader of
its own process group, logging to a file of its own (one per start) in the soak's log directory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pgqueue._worker.supervisor import PARENT_ENV

APP_PATH = "pgqueue._soak.app:app"


def child_env(dsn: str, *, lease_seconds: float, poll_seconds: float) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env.update({
        "PGQUEUE_DSN": dsn,
        "PGQUEUE_EMBEDDED": "0",  # a child must never fall back to another server
        "PGQUEUE_LEASE_SECONDS": str(lease_seconds),
        "PGQUEUE_POLL_SECONDS": str(poll_seconds),
        "PGQUEUE_SHUTDOWN_GRACE_SECONDS": "10",
        "PGQUEUE_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
        # Workers stop on their own if the soak dies (watch_parent), so none outlives a crash.
        PARENT_ENV: str(os.getpid()),
    })
    return env


@dataclass
class Child:
    """One slot (``worker-0``, ``scheduler-1``): restarted in place after a kill, new log per start."""

    role: str
    index: int
    argv: list[str]
    env: dict[str, str]
    log_dir: Path
    # The log event a start writes once it handles SIGTERM (its handlers are installed before it).
    started_event: str
    starts: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def log_path(self) -> Path:
        """The log of the latest start."""
        return self.log_dir / f"{self.name}.{max(self.starts - 1, 0)}.log"

    def start(self) -> None:
        self._close_log()
        self._log = (self.log_dir / f"{self.name}.{self.starts}.log").open("wb")
        self.starts += 1
        self.proc = subprocess.Popen(  # noqa: S603 - our own CLI, no shell
            self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> int | None:
        """SIGKILL the whole process group; return the pid that was killed (None if it was not alive)."""
        if self.proc is None or not self.alive():
            return None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        return self.proc.pid

    def stop(self, timeout: float) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; return the exit code (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.alive():
            # A child restarted moments ago (after the plan's last kill) may still be importing: SIGTERM
            # would end it by the default action (-15), an unclean stop that says nothing of pgqueue.
            self._wait_started(timeout)
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                code = None
        else:
            code = self.proc.returncode
        self._close_log()
        return code

    def _wait_started(self, timeout: float) -> None:
        marker = f'"{self.started_event}"'.encode()
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                if marker in self.log_path.read_bytes():
                    return
            time.sleep(0.1)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def worker_child(index: int, env: dict[str, str], log_dir: Path, concurrency: int) -> Child:
    argv = [sys.executable, "-m", "pgqueue", "worker", "--app", APP_PATH, "--concurrency", str(concurrency)]
    return Child("worker", index, argv, env, log_dir, started_event="worker.started")


def scheduler_child(index: int, env: dict[str, str], log_dir: Path) -> Child:
    argv = [sys.executable, "-m", "pgqueue", "scheduler", "--app", APP_PATH]
    return Child("scheduler", index, argv, env, log_dir, started_event="scheduler.started")
