"""The in-process worker: run an App's jobs from your own process, script or test."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pgqueue._worker.loop import WorkerLoop

if TYPE_CHECKING:
    from pgqueue.app import App
    from pgqueue.metrics import Metrics
    from pgqueue.settings import Settings


# How long tasks left over at the end of a run get to obey their cancellation.
_LEFTOVER_GRACE = 2.0


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run(main)``, except that leftover tasks get a bounded time to end.

    asyncio.run waits for every task it cancels at the end; an async handler that swallows its
    CancelledError (abandoned after its timeout) would keep the worker from ever exiting.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        main.close()  # never started: no "coroutine was never awaited" warning on top
        raise RuntimeError(
            "Worker.run() and run_until_empty() start an event loop of their own, and this thread is "
            "already running one (an async app or test): await run_async() or run_until_empty_async() instead")
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.wait(leftovers, timeout=_LEFTOVER_GRACE))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


class Worker:
    """Runs the jobs of ``app``'s tasks from ``queues``, up to ``concurrency`` at once.

    This is what ``pgqueue worker`` runs in each process. A worker claims jobs with
    ``FOR UPDATE SKIP LOCKED``, so any number of workers, in any number of processes, share the
    queues; it heartbeats a lease, so if its process dies its running jobs go back to the queue.
    Sync handlers run in a thread pool, ``async def`` handlers on the worker's event loop.

    A worker runs once: build a new one to run again (a second run raises ``RuntimeError``).

    Args:
        app: the App whose tasks this worker runs (its DSN and settings too).
        queues: queue names to serve; None (the default) serves every queue. ``"critical=20"``
            (or a mapping ``{"critical": 20, "bulk": None}``) gives a queue 20 slots of its own in
            this worker; bare names share ``concurrency`` slots.
        concurrency: jobs running at once (in the queues without slots of their own).
        settings: lease, poll, shutdown-grace and retention settings (default: ``app.settings``).
        worker_id: the name in ``pgqueue.workers`` and the audit trail (default: host, pid and a
            random suffix).
        metrics: count each outcome this worker writes, and its run time, in these Prometheus
            series (:func:`pgqueue.metrics.start_worker_metrics`; needs the ``web`` extra).

    Raises:
        ValueError: ``concurrency`` or a queue's slots is below 1, or a queue entry is malformed.
        pgqueue.errors.ConfigurationError: a configured encryption key is malformed.
        pgqueue.errors.EncryptionKeyMissing: compliance mode is on and no key is configured.

    Example:
        >>> app = pgqueue.App("postgresql://localhost/app")
        >>> @app.task(queue="emails")
        ... def send_email(job: pgqueue.Job, to: str) -> None: ...
        >>> worker = pgqueue.Worker(app, queues=["emails"], concurrency=20)
        >>> worker.run()  # until SIGTERM or Ctrl-C
    """

    def __init__(self, app: App, *, queues: Sequence[str] | Mapping[str, int | None] | None = None,
                 concurrency: int = 10, settings: Settings | None = None, worker_id: str | None = None,
                 metrics: Metrics | None = None) -> None:
        self._loop = WorkerLoop(app, queues=queues, concurrency=concurrency, settings=settings or app.settings,
                                worker_id=worker_id, observer=metrics.observe_event if metrics is not None else None)
        self._ran = False

    def _start_once(self, install_signal_handlers: bool) -> None:
        # A second run would stop at once (the first one's stop stays set) and return 0 with every
        # new job left waiting: refused loudly instead, as threading.Thread.start() does.
        if self._ran:
            raise RuntimeError(f"worker {self.worker_id} has already run: a Worker runs once; "
                               "build a new pgqueue.Worker to run again")
        # Refused before it counts as the run: the same worker may then run without them, as the message says.
        if install_signal_handlers and threading.current_thread() is not threading.main_thread():
            raise RuntimeError("cannot handle SIGTERM/SIGINT in a thread other than the main one: pass "
                               "install_signal_handlers=False and call stop()")
        self._ran = True

    @property
    def worker_id(self) -> str:
        """This worker's id in ``pgqueue.workers``, ``jobs.worker_id`` and the audit trail."""
        return self._loop.worker_id

    @property
    def completed(self) -> int:
        """Attempts this worker completed so far."""
        return self._loop.tally.completed

    @property
    def failed(self) -> int:
        """Jobs this worker left failed for good (an attempt that will be retried is not counted)."""
        return self._loop.tally.failed

    @property
    def stuck_threads(self) -> bool:
        """After a run: True when a sync handler's thread may still be running (it ignored the
        shutdown; its job was released). Such a thread keeps the interpreter alive: a process
        that is done should leave with ``os._exit``."""
        return self._loop.stuck_threads

    def run(self, install_signal_handlers: bool = True) -> int:
        """Run until :meth:`stop` is called or, with ``install_signal_handlers``, until SIGTERM or
        SIGINT; then stop claiming, give running jobs the shutdown grace period to finish, and hand
        back those that do not (their attempt is not counted). A second signal exits at once.

        With ``install_signal_handlers``, the grace holds even when an ``async def`` handler
        blocks the event loop (calls blocking code): at the grace, a watchdog thread hands back the
        running jobs on a connection of its own, logs ``worker.loop_blocked`` and ends the process
        (exit code 0, as a graceful stop), since the loop would never come back to do it.

        Args:
            install_signal_handlers: handle SIGTERM and SIGINT while it runs (only possible in the
                main thread); what handled them before is put back when it returns.

        Returns:
            The exit code for the process: 0.

        Example:
            >>> threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False}).start()
            >>> worker.stop()
        """
        return _run_loop(self.run_async(install_signal_handlers))

    async def run_async(self, install_signal_handlers: bool = False) -> int:
        """:meth:`run` on the running event loop (``async def`` handlers share it).

        It handles no signal by default: in an app (a web server, its lifespan), the app keeps
        SIGTERM and Ctrl-C, and its own shutdown calls :meth:`stop`. With
        ``install_signal_handlers=True`` (main thread only) SIGTERM and SIGINT are the worker's
        while it runs: the app's handlers for them run only if the app installs them after the
        worker started (its handlers for other signals always run). They are given back when it
        returns.

        Example:
            >>> async def main() -> None:
            ...     task = asyncio.create_task(worker.run_async())
            ...     ...
            ...     worker.stop()
            ...     await task
        """
        self._start_once(install_signal_handlers)
        return await self._loop.run(install_signal_handlers)

    def run_until_empty(self, install_signal_handlers: bool = False) -> int:
        """Run until no job is left for this worker, then stop gracefully and return.

        "Left" means: a job of the worker's queues is available, running (in any worker), or
        scheduled and already due. Jobs scheduled in the future are not waited for, nor are jobs
        of paused queues; a retry with no backoff, or a job a handler enqueued, is run too. Also
        returns early on :meth:`stop` or a signal, like :meth:`run`.

        Returns:
            The exit code: 0.

        Example:
            >>> app.enqueue(None, "send-email", {"to": "a@example.com"})
            >>> pgqueue.Worker(app).run_until_empty()   # in a script or a test
            0
        """
        return _run_loop(self.run_until_empty_async(install_signal_handlers))

    async def run_until_empty_async(self, install_signal_handlers: bool = False) -> int:
        """:meth:`run_until_empty` on the running event loop.

        Example:
            >>> await pgqueue.Worker(app, queues=["emails"]).run_until_empty_async()
            0
        """
        self._start_once(install_signal_handlers)
        self._loop.until_empty = True
        return await self._loop.run(install_signal_handlers)

    def stop(self) -> None:
        """Ask the worker to stop claiming and shut down gracefully (thread-safe, idempotent; a
        worker told to stop before it runs stops as soon as it starts)."""
        self._loop.stop()
