"""The shutdown watchdog's decision (pgqueue._worker.watchdog): take over only from a loop that is
blocked past the grace, never from one that is free or has finished; and the stop-signal reader
leaves the other signals an event loop handles working.

Releasing and exiting are covered with real processes in tests/e2e/test_worker_processes.py; here
the take-over is recorded instead of performed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from pgqueue._worker.acker import Tally
from pgqueue._worker.watchdog import StopSignals, Watchdog
from tests.helpers import wait_until


class RecordingWatchdog(Watchdog):
    def __init__(self, loop: asyncio.AbstractEventLoop, grace_seconds: float, finished: threading.Event) -> None:
        super().__init__(dsn=None, worker_id="test", grace_seconds=grace_seconds, loop=loop, finished=finished,
                         running=list, buffered=list, background=list, tally=Tally(), exit_hooks=())
        self.took_over = threading.Event()
        self.took_over_after = 0.0

    def _take_over(self) -> None:
        self.took_over_after = time.monotonic() - self._started_at
        self.took_over.set()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own, as the worker's runs in the main thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_a_loop_blocked_past_the_grace_is_taken_over_at_about_the_grace(loop: asyncio.AbstractEventLoop) -> None:
    release = threading.Event()
    loop.call_soon_threadsafe(release.wait, 30)  # a handler blocking the loop
    watchdog = RecordingWatchdog(loop, grace_seconds=1.0, finished=threading.Event())
    watchdog.start()
    try:
        assert watchdog.took_over.wait(10)
        assert 1.0 <= watchdog.took_over_after < 1.0 + 2.0
    finally:
        release.set()


def test_a_free_loop_that_is_still_stopping_is_left_alone(loop: asyncio.AbstractEventLoop) -> None:
    # Past the grace, not finished (a slow shutdown, a database outage): the loop answers every
    # question, so it does its own releasing. Several rounds of questions go by.
    finished = threading.Event()
    watchdog = RecordingWatchdog(loop, grace_seconds=0.2, finished=finished)
    watchdog.start()
    assert not watchdog.took_over.wait(5)
    assert watchdog.is_alive()
    finished.set()
    watchdog.join(5)
    assert not watchdog.is_alive()
    assert not watchdog.took_over.is_set()


def test_a_run_that_finished_is_never_taken_over_even_if_the_loop_blocks_afterwards(
        loop: asyncio.AbstractEventLoop) -> None:
    finished = threading.Event()
    watchdog = RecordingWatchdog(loop, grace_seconds=0.5, finished=finished)
    watchdog.start()
    finished.set()
    release = threading.Event()
    loop.call_soon_threadsafe(release.wait, 30)
    try:
        watchdog.join(5)
        assert not watchdog.is_alive()
        assert not watchdog.took_over.is_set()
    finally:
        release.set()


def test_a_loop_that_blocks_after_answering_is_taken_over_when_it_stops_answering(
        loop: asyncio.AbstractEventLoop) -> None:
    finished = threading.Event()
    watchdog = RecordingWatchdog(loop, grace_seconds=0.2, finished=finished)
    watchdog.start()
    assert not watchdog.took_over.wait(2.5)  # free: left alone
    release = threading.Event()
    loop.call_soon_threadsafe(release.wait, 30)
    try:
        assert watchdog.took_over.wait(10)
    finally:
        release.set()


def test_the_stop_signal_reader_sees_each_stop_signal_and_gives_the_signals_back() -> None:
    def previous(_signum: int, _frame: object) -> None:
        raise AssertionError("the reader should own SIGTERM while installed")

    before = signal.signal(signal.SIGTERM, previous)  # never the default action: pytest must not die
    try:
        stops: list[int] = []
        reader = StopSignals(stops.append)
        reader.install()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            wait_until(lambda: len(stops) == 2, timeout=10, message="both deliveries were read")
        finally:
            reader.uninstall()
        assert stops == [signal.SIGTERM, signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is previous
        assert not reader.is_alive()
    finally:
        signal.signal(signal.SIGTERM, before)


def test_the_stop_signal_reader_passes_other_signals_on_to_the_event_loop_that_handles_them() -> None:
    loop = asyncio.new_event_loop()
    stops: list[int] = []
    try:
        got_usr1 = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, got_usr1.set)
        reader = StopSignals(stops.append)
        reader.install()
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            loop.run_until_complete(asyncio.wait_for(got_usr1.wait(), 10))
        finally:
            reader.uninstall()
        assert stops == []
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        loop.close()


def test_a_take_over_that_the_loop_overtakes_leaves_the_process_alone(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop came back and ended the run while the watchdog was releasing: the run's caller
    goes on (a script's code after run()), so no exit hook runs and the process is not ended."""
    finished = threading.Event()
    exits: list[int] = []
    hooks: list[str] = []
    monkeypatch.setattr(os, "_exit", exits.append)

    class SessionThreadOvertaken:
        def stop(self) -> None:
            finished.set()  # meanwhile, run() returned

        def join(self, _timeout: float) -> None:
            pass

    watchdog = Watchdog(dsn=None, worker_id="test", grace_seconds=0.0, loop=loop, finished=finished,
                        running=list, buffered=list, background=lambda: [SessionThreadOvertaken()],  # type: ignore[list-item]
                        tally=Tally(), exit_hooks=[lambda: hooks.append("ran")])
    watchdog._take_over()

    assert (exits, hooks) == ([], [])
