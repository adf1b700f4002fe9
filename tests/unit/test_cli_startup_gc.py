"""The CLI pauses the cyclic garbage collector during start-up and freezes what start-up built
(pgqueue.cli._startup); a collector someone else turned off stays theirs."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from pgqueue.cli import _startup


@pytest.fixture(autouse=True)
def collector() -> Iterator[None]:
    was_enabled = gc.isenabled()
    yield
    gc.unfreeze()  # the frozen objects go back to the collector of this test process
    _startup._paused = False
    if was_enabled:
        gc.enable()
    else:
        gc.disable()


def test_resume_turns_the_collector_back_on_and_freezes_what_exists() -> None:
    gc.enable()
    _startup.pause_gc()
    assert not gc.isenabled()
    built = [object() for _ in range(10)]  # start-up's objects

    _startup.resume_gc()

    assert gc.isenabled()
    assert gc.get_freeze_count() > 0
    del built


def test_resume_without_a_pause_changes_nothing() -> None:
    gc.enable()

    _startup.resume_gc()

    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_a_collector_that_was_already_off_stays_off() -> None:
    gc.disable()

    _startup.pause_gc()
    _startup.resume_gc()

    assert not gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_resume_acts_once() -> None:
    gc.enable()
    _startup.pause_gc()
    _startup.resume_gc()
    gc.disable()  # someone else's decision, after start-up

    _startup.resume_gc()

    assert not gc.isenabled()
