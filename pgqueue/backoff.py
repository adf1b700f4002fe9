"""Retry backoff policies: how long a failed attempt waits before the next one."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """A retry delay policy. Build one with :meth:`exponential` or :meth:`fixed`.

    Example:
        >>> Backoff.fixed(10).delay(3)
        10.0
        >>> Backoff.exponential(initial=2.0, cap=3600, jitter=False).delay(4)
        16.0
    """

    kind: str
    initial: float
    cap: float
    jitter: bool

    @classmethod
    def exponential(cls, initial: float = 2.0, cap: float = 3600.0, jitter: bool = True) -> Backoff:
        """Wait about ``initial * 2**(attempt-1)`` seconds, never more than ``cap``.

        Jitter spreads the delay over ±25% so a burst of failures does not retry in lockstep.
        """
        if not (initial >= 0 and cap >= 0):  # written so that NaN is refused too
            raise ValueError(f"backoff initial={initial} and cap={cap} must be >= 0")
        return cls("exponential", float(initial), float(cap), jitter)

    @classmethod
    def fixed(cls, seconds: float) -> Backoff:
        """Wait the same number of seconds after every failed attempt."""
        if not seconds >= 0:  # written so that NaN is refused too
            raise ValueError(f"backoff seconds={seconds} must be >= 0")
        return cls("fixed", float(seconds), float(seconds), False)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if self.kind == "fixed":
            return self.initial
        # The exponent is bounded: 2.0 ** 1024 overflows a float, and max_attempts goes to 10,000.
        base = min(self.cap, self.initial * 2.0 ** min(max(attempt - 1, 0), 1000))
        if self.jitter and base > 0:
            base = min(self.cap, base * random.uniform(0.75, 1.25))
        return base


DEFAULT_BACKOFF = Backoff.exponential()
