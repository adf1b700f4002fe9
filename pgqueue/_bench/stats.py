"""The one timing and statistics helper: samples from each repetition, summarised as median (min-max)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sample:
    """One figure from one repetition of one scenario."""

    key: str
    unit: str
    value: float
    note: str | None = None


@dataclass
class Figure:
    """Every repetition's value of one key; the report shows the median and the range."""

    key: str
    unit: str
    values: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, sample: Sample) -> None:
        self.values.append(sample.value)
        if sample.note and sample.note not in self.notes:
            self.notes.append(sample.note)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) with linear interpolation; NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * p / 100.0
    lower = int(rank)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (rank - lower)


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


@dataclass
class Stopwatch:
    """Elapsed wall time of a ``with`` block, from ``time.perf_counter``."""

    seconds: float = 0.0


@contextmanager
def timed() -> Iterator[Stopwatch]:
    watch = Stopwatch()
    started = time.perf_counter()
    try:
        yield watch
    finally:
        watch.seconds = time.perf_counter() - started
