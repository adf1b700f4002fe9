"""Backoff policies: exponential doubling with a cap and ±25% jitter, and fixed delays."""

from __future__ import annotations

import pytest

from pgqueue import Backoff


def test_exponential_backoff_doubles_from_initial_with_each_attempt() -> None:
    backoff = Backoff.exponential(initial=2.0, cap=10_000, jitter=False)

    assert [backoff.delay(attempt) for attempt in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0]


def test_exponential_backoff_never_exceeds_its_cap() -> None:
    backoff = Backoff.exponential(initial=1.0, cap=30.0, jitter=False)

    assert backoff.delay(5) == 16.0
    assert backoff.delay(6) == 30.0
    assert backoff.delay(1000) == 30.0
    assert backoff.delay(10_000) == 30.0  # 2.0 ** 9999 would overflow a float: max_attempts allows 10,000
    assert Backoff.exponential(initial=1.0, cap=30.0, jitter=True).delay(10_000) <= 30.0


def test_exponential_backoff_treats_attempt_zero_like_the_first_attempt() -> None:
    assert Backoff.exponential(initial=3.0, jitter=False).delay(0) == 3.0


def test_jitter_spreads_delays_within_25_percent_of_the_exponential_value() -> None:
    backoff = Backoff.exponential(initial=4.0, cap=10_000, jitter=True)

    delays = [backoff.delay(3) for _ in range(2000)]  # base 16 s

    assert all(12.0 <= d <= 20.0 for d in delays)
    # Not lockstep: the samples really spread over the range, on both sides of the base.
    assert min(delays) < 14.0
    assert max(delays) > 18.0


def test_jitter_never_pushes_a_delay_over_the_cap() -> None:
    backoff = Backoff.exponential(initial=10.0, cap=25.0, jitter=True)

    delays = [backoff.delay(3) for _ in range(1000)]  # base min(40, 25) = 25

    assert all(18.75 <= d <= 25.0 for d in delays)


def test_fixed_backoff_waits_the_same_after_every_attempt() -> None:
    backoff = Backoff.fixed(7)

    assert {backoff.delay(attempt) for attempt in range(1, 50)} == {7.0}


def test_fixed_backoff_of_zero_retries_at_once() -> None:
    assert Backoff.fixed(0).delay(3) == 0.0


def test_default_exponential_backoff_starts_at_two_seconds_and_caps_at_an_hour() -> None:
    backoff = Backoff.exponential(jitter=False)

    assert backoff.delay(1) == 2.0
    assert backoff.delay(40) == 3600.0


@pytest.mark.parametrize("build", [
    lambda: Backoff.fixed(-1),
    lambda: Backoff.exponential(initial=-1.0),
    lambda: Backoff.exponential(cap=-5.0),
])
def test_negative_backoff_values_are_refused(build) -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        build()


@pytest.mark.parametrize("build", [
    lambda: Backoff.fixed(float("nan")),
    lambda: Backoff.exponential(initial=float("nan")),
    lambda: Backoff.exponential(cap=float("nan")),
])
def test_nan_backoff_values_are_refused(build) -> None:
    # A NaN delay reached the database as the retry's run_at, which refused it ("interval out of
    # range"): the job failed at its first attempt with that error instead of being retried.
    with pytest.raises(ValueError, match="must be >= 0"):
        build()
