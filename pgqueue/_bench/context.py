"""What every scenario gets: the sizes to run at, fresh databases, and a status line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pgqueue._bench.database import ScratchDatabases
from pgqueue._bench.stats import Sample


@dataclass(frozen=True)
class Sizes:
    """How much work each scenario does; ``QUICK`` finishes in well under a minute."""

    enqueue_single: int
    enqueue_bulk: int
    bulk_batch: int
    process: int
    process_cap_s: float
    latency: int
    latency_gap_s: float
    backlogs: tuple[int, int]
    backlog_measure: int
    churn: int
    churn_wave: int
    churn_keep_s: float
    churn_cap_s: float
    churn_prune_s: float
    physical_single: int
    physical_batch: int


FULL = Sizes(enqueue_single=5_000, enqueue_bulk=50_000, bulk_batch=10_000, process=20_000, process_cap_s=60,
             latency=200, latency_gap_s=0.020, backlogs=(10_000, 1_000_000), backlog_measure=5_000,
             churn=200_000, churn_wave=10_000, churn_keep_s=3.0, churn_cap_s=900, churn_prune_s=1.0,
             physical_single=5_000, physical_batch=50_000)
QUICK = Sizes(enqueue_single=500, enqueue_bulk=10_000, bulk_batch=10_000, process=2_000, process_cap_s=20,
              latency=25, latency_gap_s=0.020, backlogs=(10_000, 100_000), backlog_measure=1_000,
              churn=10_000, churn_wave=2_000, churn_keep_s=1.0, churn_cap_s=60, churn_prune_s=1.0,
              physical_single=500, physical_batch=5_000)


@dataclass
class Context:
    databases: ScratchDatabases
    sizes: Sizes
    status: Callable[[str], None]


@dataclass(frozen=True)
class Unit:
    label: str
    run: Callable[[Context], list[Sample]]


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    units: Callable[[Sizes], list[Unit]]
