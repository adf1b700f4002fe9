"""SIGTERM/SIGINT for a worker run from the user's own process (``Worker.run()`` in a script,
``run_async(install_signal_handlers=True)`` on the user's event loop), with real processes: the
worker stops gracefully, and the signals are the script's or the app's again afterwards, whatever
the code on the loop did with its own signal handlers meanwhile."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, ProcessGroups, wait_until
from tests.plugins.processes import clean_env


@pytest.fixture
def groups(tmp_path: Path) -> Iterator[ProcessGroups]:
    spawned = ProcessGroups(tmp_path)
    yield spawned
    spawned.kill_all()


def run_script(groups: ProcessGroups, tmp_path: Path, dsn: str, body: str) -> tuple[int, Path, Path]:
    """Start ``body`` (Python, with ``app`` an App on ``dsn``) in a process of its own; its pid and logs."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""\
        import asyncio, os, signal, sys, time
        import pgqueue
        from pgqueue.settings import Settings

        app = pgqueue.App(sys.argv[1], settings=Settings(dsn=sys.argv[1], lease_seconds=10, poll_seconds=0.5,
                                                         shutdown_grace_seconds=5))
        """) + textwrap.dedent(body))
    proc, stdout, stderr = groups.start([sys.executable, str(script), dsn], cwd=REPO_ROOT, env=clean_env(None),
                                        name="script")
    return proc.pid, stdout, stderr


def said(path: Path, line: str) -> bool:
    return line in path.read_text().splitlines()


def test_ctrl_c_stops_worker_run_in_a_script_which_then_goes_on_and_gets_keyboardinterrupt_again(
        dsn: str, groups: ProcessGroups, tmp_path: Path) -> None:
    pid, stdout, stderr = run_script(groups, tmp_path, dsn, """
        worker = pgqueue.Worker(app, concurrency=1)
        print("before", signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)
        code = worker.run()
        print("run returned", code, flush=True)
        print("after", signal.getsignal(signal.SIGINT) is signal.default_int_handler,
              signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
            sys.exit(7)
        """)
    wait_until(lambda: _handles_sigterm(pid), timeout=20, message="the worker installed its handlers")
    os.killpg(pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole process group
    wait_until(lambda: said(stdout, "after True True"), timeout=20, message=f"run() returned: {stderr.read_text()}")
    assert said(stdout, "run returned 0")
    os.killpg(pid, signal.SIGINT)
    assert _exit_code(groups) == 7, stderr.read_text()
    assert said(stdout, "KeyboardInterrupt")
    assert "Traceback" not in stderr.read_text()


def test_code_on_the_loop_adding_a_signal_handler_of_its_own_leaves_the_worker_its_sigterm(
        dsn: str, groups: ProcessGroups, tmp_path: Path) -> None:
    # loop.add_signal_handler (for any signal) points the wakeup fd at the loop's own: the worker's
    # signal thread, which reads the wakeup fd, then never saw SIGTERM and the worker ran on.
    pid, stdout, stderr = run_script(groups, tmp_path, dsn, """
        async def main() -> None:
            loop = asyncio.get_running_loop()
            worker = pgqueue.Worker(app, concurrency=1)
            running = asyncio.create_task(worker.run_async(install_signal_handlers=True))
            while signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                await asyncio.sleep(0.01)
            reloads = asyncio.Event()
            loop.add_signal_handler(signal.SIGHUP, reloads.set)  # the app's own, after the worker's
            print("ready", flush=True)
            print("worker exited", await running, flush=True)
            os.kill(os.getpid(), signal.SIGHUP)
            await asyncio.wait_for(reloads.wait(), 10)
            print("SIGHUP still the app's", flush=True)

        asyncio.run(main())
        """)
    wait_until(lambda: said(stdout, "ready"), timeout=20, message="the script started")
    os.kill(pid, signal.SIGTERM)
    assert _exit_code(groups) == 0, stderr.read_text()
    assert said(stdout, "worker exited 0")
    assert said(stdout, "SIGHUP still the app's")


def test_a_sigterm_handler_the_app_installs_on_the_loop_while_the_worker_runs_stays_after_it(
        dsn: str, groups: ProcessGroups, tmp_path: Path) -> None:
    # The worker gave SIGTERM back to what handled it before it started (the default action) even
    # when the app had taken it meanwhile: the app's next SIGTERM killed it instead of reaching it.
    pid, stdout, stderr = run_script(groups, tmp_path, dsn, """
        async def main() -> None:
            loop = asyncio.get_running_loop()
            worker = pgqueue.Worker(app, concurrency=1)
            running = asyncio.create_task(worker.run_async(install_signal_handlers=True))
            while signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                await asyncio.sleep(0.01)
            terms: asyncio.Queue[None] = asyncio.Queue()
            loop.add_signal_handler(signal.SIGTERM, terms.put_nowait, None)
            print("ready", flush=True)
            await terms.get()
            worker.stop()
            print("worker exited", await running, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(terms.get(), 10)
            print("SIGTERM still the app's", flush=True)

        asyncio.run(main())
        """)
    wait_until(lambda: said(stdout, "ready"), timeout=20, message="the script started")
    os.kill(pid, signal.SIGTERM)
    assert _exit_code(groups) == 0, stderr.read_text()
    assert said(stdout, "worker exited 0")
    assert said(stdout, "SIGTERM still the app's")


def test_sigterm_stops_a_worker_in_a_process_with_more_than_1024_files_open(
        dsn: str, groups: ProcessGroups, tmp_path: Path) -> None:
    # A busy process (a web app's sockets) has fds past select()'s limit of 1024: the signal
    # thread, which waited for its pipe in select(), died at once and the worker never stopped.
    pid, _stdout, stderr = run_script(groups, tmp_path, dsn, """
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < 1200:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(1200, hard), hard))
        held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
        sys.exit(pgqueue.Worker(app, concurrency=1).run())
        """)
    wait_until(lambda: _handles_sigterm(pid), timeout=20, message="the worker installed its handlers")
    os.kill(pid, signal.SIGTERM)
    assert _exit_code(groups) == 0, stderr.read_text()


def _handles_sigterm(pid: int) -> bool:
    """The process catches SIGTERM (SigCgt in /proc): the worker's handlers are installed."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def _exit_code(groups: ProcessGroups) -> int:
    [proc] = groups.procs
    return proc.wait(timeout=30)
