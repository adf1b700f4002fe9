"""Circuit breakers: stop running a task whose downstream keeps failing, for every worker at once.

Declare one on a task; the state is shared through ``pgqueue.circuit_breakers``:

- **closed** (normal): each failed attempt is counted on the database clock, in the same
  transaction as the attempt's outcome. ``failures`` failed attempts within any ``window``
  seconds open the breaker.
- **open**: no worker claims a job of the task; its jobs stay ``available`` and use no attempt.
- **half_open**: ``cooldown`` seconds after opening, a worker claims exactly one trial job. Its
  success closes the breaker; its failure opens it again for another cooldown. If the trial's
  worker dies, the trial's lease is rescued and another trial is allowed.

Every transition is a row in ``pgqueue.job_events`` (``breaker_opened``, ``breaker_half_opened``,
``breaker_closed``, ``breaker_reset``; ``job_id`` is NULL and ``detail`` names the task).

Example:
    >>> @app.task(name="send-sms", circuit_breaker=pgqueue.CircuitBreaker(failures=5, window=60, cooldown=30))
    ... def send_sms(job: pgqueue.Job, to: str, text: str) -> None: ...
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class BreakerState(enum.StrEnum):
    """A breaker's state, as stored in ``pgqueue.circuit_breakers.state``."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class CircuitBreaker:
    """A task's circuit breaker settings.

    Args:
        failures: failed attempts (across all workers) that open the breaker, at least 1.
        window: seconds within which those failures must fall (a sliding window), > 0.
        cooldown: seconds the breaker stays open before one trial job runs, >= 0.

    Raises:
        ValueError: a setting is out of range.
    """

    failures: int = 5
    window: float = 60.0
    cooldown: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.failures, bool) or not isinstance(self.failures, int) or not 1 <= self.failures <= 10_000:
            raise ValueError(f"CircuitBreaker failures {self.failures!r} must be an integer from 1 to 10000")
        for name, value, low in (("window", self.window, 0.0), ("cooldown", self.cooldown, 0.0)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"CircuitBreaker {name} {value!r} must be a finite number of seconds")
            if value < low or (name == "window" and value == 0):
                raise ValueError(f"CircuitBreaker {name} {value!r} must be {'> 0' if name == 'window' else '>= 0'}")
