"""A handler's child processes never outlive the ``pgqueue worker`` process that ran it.

A handler may fork (``os.fork``, ``multiprocessing``, ``subprocess`` with a daemon that detaches).
Left alone, such a child outlives the worker: after a deploy it goes on working with the old
code, holding connections and files, and nobody is watching it. On Linux the worker process
therefore:

- becomes a *child subreaper* (``PR_SET_CHILD_SUBREAPER``), so that a grandchild whose parent
  exits (a double-forked daemon) is re-parented to the worker, not to init, and stays findable;
- gives every child forked by Python code in it (``os.fork``, ``multiprocessing``) a parent-death
  signal (``PR_SET_PDEATHSIG`` = SIGKILL): if the worker is SIGKILLed, the kernel kills the child.
  The kernel ties that signal to the *thread* that forked, so a child forked by a sync handler
  also dies when the worker retires that handler's thread (at shutdown, or when it abandons a
  thread that overran its timeout);
- on its way out, sends SIGTERM to every remaining child, then SIGKILL after a short grace.

Only the ``pgqueue worker`` command does this (it owns its process); an in-process
:class:`pgqueue.Worker` leaves the host application's processes alone. Elsewhere than Linux
nothing is done. Documented in docs/operations.md ("Handlers that start processes").
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from pathlib import Path

from pgqueue._log import get_logger

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


_worker_pid: int | None = None


def _die_with_worker() -> None:
    # In the forked child. The worker may have died between the fork and this call: then the
    # signal would never come, so leave at once.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if _worker_pid is not None and os.getppid() != _worker_pid:
        os._exit(1)


def contain_children() -> bool:
    """Make this process the keeper of its descendants (see the module docstring); False if unsupported."""
    global _worker_pid
    if not sys.platform.startswith("linux"):
        return False
    if _worker_pid is None:
        _worker_pid = os.getpid()
        os.register_at_fork(after_in_child=_die_with_worker)
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _children() -> list[int]:
    me = os.getpid()
    pids: list[int] = []
    for task in Path(f"/proc/{me}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            pids += [int(pid) for pid in (task / "children").read_text().split()]
    if pids:
        return sorted(set(pids))
    # Kernels without /proc/<pid>/task/<tid>/children: scan every process's parent.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[1]) == me:
                pids.append(int(entry.name))
    return pids


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def end_children(grace_seconds: float = 2.0) -> int:
    """SIGTERM every child still alive, SIGKILL those left after ``grace_seconds``; how many there were."""
    if _worker_pid != os.getpid():
        return 0
    pids = _children()
    if not pids:
        return 0
    get_logger("pgqueue.worker").warning("worker.children_ended", pids=pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        _reap()
        if not _children():
            return len(pids)
        time.sleep(0.05)
    # Re-parented grandchildren may have appeared meanwhile: kill what is there now.
    for pid in _children():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.05)
    _reap()
    return len(pids)
