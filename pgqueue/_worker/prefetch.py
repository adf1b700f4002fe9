"""How many jobs a worker claims ahead of its free slots (its local prefetch buffer).

A claim is one round trip (and one commit) whatever its size, so a worker that claims only as many
jobs as it has free slots pays a round trip per job at low concurrency. Claiming ahead hides that
round trip behind the jobs still running. The cost: a prefetched job is claimed (state
``running``, under this worker's lease) before it starts, so a job that arrives later with a
higher priority waits behind the buffer, and other workers cannot take the buffered jobs.

Both costs are bounded by time, not by a count: the buffer holds at most what the worker's slots
finish within :data:`WINDOW_SECONDS`, judged from how long recent attempts ran. Slow jobs (longer
than the window per slot) are never prefetched, so a worker never sits on jobs that an idle
worker could have started; no-op jobs are prefetched up to the cap.
"""

from __future__ import annotations

#: The longest a prefetched job should wait in the buffer (and a later, higher-priority job
#: behind it): the buffer holds what the slots finish in this long.
WINDOW_SECONDS = 0.02
#: The buffer's size cap when none is configured: the pool's slots, but at least this many, so a
#: concurrency-1 worker still claims a few dozen jobs per round trip.
MIN_AUTO_CAP = 32
#: Weight of the newest attempt in the running average of attempt durations.
_ALPHA = 0.2


class PrefetchSizer:
    """The prefetch target of a worker's pools, from a running average of attempt durations.

    Args:
        cap: the most jobs a pool buffers (``Settings.prefetch``): None sizes it from the pool
            (``max(slots, MIN_AUTO_CAP)``), 0 turns prefetching off.
    """

    def __init__(self, cap: int | None = None, window: float = WINDOW_SECONDS) -> None:
        if cap is not None and cap < 0:
            raise ValueError(f"prefetch {cap} must be >= 0")
        self.cap = cap
        self.window = window
        #: Average wall time of an attempt, seconds; None until one has finished.
        self.average: float | None = None

    def observe(self, seconds: float) -> None:
        """One attempt ran ``seconds`` (handler start to outcome)."""
        if self.average is None:
            self.average = seconds
        else:
            self.average += _ALPHA * (seconds - self.average)

    def target(self, slots: int) -> int:
        """How many jobs a pool of ``slots`` should hold ready beyond its running ones.

        Zero until an attempt has been timed: the first claim takes only what can start at once.
        """
        if self.cap == 0 or self.average is None:
            return 0
        cap = self.cap if self.cap is not None else max(slots, MIN_AUTO_CAP)
        # The buffer drains at slots/average jobs per second; hold what drains within the window.
        fits = int(self.window * slots / max(self.average, 1e-6))
        return min(cap, fits)
