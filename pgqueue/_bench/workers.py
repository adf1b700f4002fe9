"""Real pgqueue ``Worker`` processes for the benchmark, each running a no-op task.

Workers always run in child processes, even for one process: the parent's enqueuers, pruner and
probes then never share a GIL with the worker being measured. A child is
``python -m pgqueue._bench.child`` (not multiprocessing, which would re-import the caller's
main module): the DSN (and an encryption key) come in the environment (never argv), it stops when
its stdin closes (so it also stops when the parent dies), and in the latency scenario the handler
writes ``<i> <time.time()>`` lines to stdout. Besides the no-op task, every child serves a probe
task (its handler writes ``<i> <time.monotonic()>``: CLOCK_MONOTONIC, the same clock in every
process of the machine) and a task that sleeps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import TracebackType

from pgqueue._db.bench import bench_probe
from pgqueue.errors import PgqueueError

TASK = "pgqueue_bench.noop"
PROBE_TASK = "pgqueue_bench.probe"
SLEEP_TASK = "pgqueue_bench.sleep"
QUEUE = "bench"
ASYNC = "async"
SYNC = "sync"
DSN_ENV = "PGQUEUE_BENCH_DSN"
KEY_ENV = "PGQUEUE_BENCH_ENCRYPTION_KEY"
LOG_ENV = "PGQUEUE_BENCH_WORKER_LOG"


class WorkerProcesses:
    """``processes`` children, each one Worker with ``concurrency`` slots; stopped on exit.

    Example:
        >>> with WorkerProcesses(dsn, processes=2, concurrency=50) as workers:
        ...     workers.wait_ready()
    """

    def __init__(self, dsn: str, *, processes: int, concurrency: int, handler: str = ASYNC,
                 record_starts: bool = False, retain_completed: float | None = None,
                 prune_interval: float | None = None, queues: Sequence[str] = (), record_probes: bool = False,
                 encryption_key: str | None = None) -> None:
        self.dsn = dsn
        self.processes = processes
        self.argv = [sys.executable, "-m", "pgqueue._bench.child", "--concurrency", str(concurrency),
                     "--handler", handler] + (["--record-starts"] if record_starts else [])
        if record_probes:
            self.argv.append("--record-probes")
        # With a key the child runs in compliance mode (PGQUEUE_ENCRYPT_ALL): results encrypted too.
        self.encryption_key = encryption_key
        if retain_completed is not None:
            self.argv += ["--retain-completed", str(retain_completed)]
        if prune_interval is not None:
            self.argv += ["--prune-interval", str(prune_interval)]
        for queue in queues:
            self.argv += ["--queue", queue]
        self.record_starts = record_starts or record_probes
        self.starts: dict[int, float] = {}
        self._children: list[subprocess.Popen[str]] = []
        self._readers: list[threading.Thread] = []

    def __enter__(self) -> WorkerProcesses:
        env = dict(os.environ, **{DSN_ENV: self.dsn})
        if self.encryption_key is not None:
            env[KEY_ENV] = self.encryption_key
        for _ in range(self.processes):
            child = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                self.argv, env=env, stdin=subprocess.PIPE, text=True,
                stdout=subprocess.PIPE if self.record_starts else subprocess.DEVNULL)
            self._children.append(child)
            if self.record_starts:
                reader = threading.Thread(target=self._read_starts, args=(child,), daemon=True)
                reader.start()
                self._readers.append(reader)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        """The children's process ids: each is the worker process itself (no supervisor between)."""
        return [child.pid for child in self._children]

    def _read_starts(self, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None  # noqa: S101 - set by __enter__
        for line in child.stdout:
            index, _, started = line.partition(" ")
            self.starts[int(index)] = float(started)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every child's worker has registered (its heartbeat row exists) and gone idle."""
        deadline = time.monotonic() + timeout
        with bench_probe(self.dsn) as probe:
            while probe.live_workers() < self.processes:
                if any(child.poll() is not None for child in self._children):
                    raise PgqueueError("a benchmark worker process exited during start-up")
                if time.monotonic() > deadline:
                    raise PgqueueError(f"benchmark workers did not register within {timeout:g}s")
                time.sleep(0.05)
        # Registered workers run their first claim and LISTEN a moment later.
        time.sleep(0.5)

    def stop(self, timeout: float = 30.0) -> None:
        for child in self._children:
            if child.stdin is not None and not child.stdin.closed:
                child.stdin.close()
        deadline = time.monotonic() + timeout
        for child in self._children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
        for reader in self._readers:
            reader.join(5)
