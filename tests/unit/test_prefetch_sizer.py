"""The prefetch sizer: how many jobs a worker claims ahead of its free slots."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pgqueue._worker.pools import Pool
from pgqueue._worker.prefetch import MIN_AUTO_CAP, WINDOW_SECONDS, PrefetchSizer
from pgqueue.errors import ConfigurationError
from pgqueue.jobs import Job
from pgqueue.settings import Settings, parse_prefetch


def test_nothing_is_prefetched_before_an_attempt_was_timed() -> None:
    assert PrefetchSizer().target(10) == 0


def test_fast_jobs_fill_the_auto_cap_which_is_the_slots_but_at_least_the_minimum() -> None:
    sizer = PrefetchSizer()
    sizer.observe(0.0001)
    assert sizer.target(1) == MIN_AUTO_CAP
    assert sizer.target(50) == 50


def test_the_buffer_holds_only_what_the_slots_finish_within_the_window() -> None:
    sizer = PrefetchSizer()
    sizer.observe(0.005)  # 5 ms a job: one slot finishes 4 within 20 ms, five slots 20
    assert sizer.target(1) == int(WINDOW_SECONDS / 0.005)
    assert sizer.target(5) == int(WINDOW_SECONDS * 5 / 0.005)


def test_slow_jobs_are_never_prefetched() -> None:
    sizer = PrefetchSizer()
    sizer.observe(0.5)
    assert sizer.target(10) == 0


def test_the_average_follows_a_change_of_pace() -> None:
    sizer = PrefetchSizer()
    sizer.observe(0.0001)
    assert sizer.target(1) == MIN_AUTO_CAP
    for _ in range(30):  # the jobs got slow: the buffer shrinks to nothing
        sizer.observe(1.0)
    assert sizer.target(1) == 0


def test_a_configured_cap_bounds_the_buffer_and_zero_turns_it_off() -> None:
    capped = PrefetchSizer(cap=5)
    capped.observe(0.0001)
    assert capped.target(50) == 5
    off = PrefetchSizer(cap=0)
    off.observe(0.0001)
    assert off.target(50) == 0
    with pytest.raises(ValueError, match="must be >= 0"):
        PrefetchSizer(cap=-1)


def test_the_setting_reads_auto_or_a_whole_number() -> None:
    assert Settings.from_env({}).prefetch is None
    assert Settings.from_env({"PGQUEUE_PREFETCH": "auto"}).prefetch is None
    assert Settings.from_env({"PGQUEUE_PREFETCH": "0"}).prefetch == 0
    assert Settings.from_env({"PGQUEUE_PREFETCH": "64"}).prefetch == 64
    assert parse_prefetch(" AUTO ") is None
    for bad in ("-1", "many", "1.5", "²"):
        with pytest.raises(ConfigurationError, match="must be 'auto' or a whole number"):
            parse_prefetch(bad)
    with pytest.raises(ConfigurationError, match="PGQUEUE_PREFETCH"):
        Settings.from_env({"PGQUEUE_PREFETCH": "lots"})


def _job(job_id: int, priority: int) -> Job:
    return Job(id=job_id, task="t", queue="q", args={}, attempt=1, max_attempts=3,
               enqueued_at=datetime.now(UTC), priority=priority)


def test_a_claimed_job_that_outranks_the_buffer_goes_before_it_and_ties_keep_claim_order() -> None:
    pool = Pool(None, 1)
    pool.buffer_jobs([_job(1, 100), _job(2, 100), _job(3, 100)])
    pool.buffer_jobs([_job(4, 100), _job(5, 0), _job(6, 100)])  # 5 is urgent: a smaller number runs first
    assert [job.id for job in pool.buffer] == [5, 1, 2, 3, 4, 6]
    pool.buffer_jobs([_job(7, 100)])
    assert [job.id for job in pool.buffer] == [5, 1, 2, 3, 4, 6, 7]
    pool.buffer_jobs([])
    assert len(pool.buffer) == 7
