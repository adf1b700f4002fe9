"""What every scenario gets: the sizes to run at, fresh databases, and a status line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pgqueue._bench.database import ScratchDatabases
from pgqueue._bench.stats import Sample


@dataclass(frozen=True)
class Sizes:
    """How much work each scenario does; ``QUICK`` runs every scenario in 1-2 minutes (90 s on 2 cores)."""

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
    # latency-load: probes (one every load_gap_s) while one worker drains load_backlog no-ops.
    load_backlog: int = 300_000
    load_probes: int = 100
    load_gap_s: float = 0.050
    # guarantees: the backlog each variant drains.
    guarantees_jobs: int = 20_000
    # memory: the backlog worked through, its time cap, and how long 50 sleeping jobs are held.
    memory_backlog: int = 1_000_000
    memory_cap_s: float = 300
    memory_hold_s: float = 20


FULL = Sizes(enqueue_single=5_000, enqueue_bulk=50_000, bulk_batch=10_000, process=20_000, process_cap_s=60,
             latency=200, latency_gap_s=0.020, backlogs=(10_000, 1_000_000), backlog_measure=5_000,
             churn=200_000, churn_wave=10_000, churn_keep_s=3.0, churn_cap_s=900, churn_prune_s=1.0,
             physical_single=5_000, physical_batch=50_000)
QUICK = Sizes(enqueue_single=500, enqueue_bulk=10_000, bulk_batch=10_000, process=2_000, process_cap_s=20,
              latency=25, latency_gap_s=0.020, backlogs=(10_000, 100_000), backlog_measure=1_000,
              churn=10_000, churn_wave=2_000, churn_keep_s=1.0, churn_cap_s=60, churn_prune_s=1.0,
              physical_single=500, physical_batch=5_000,
              load_backlog=60_000, load_probes=40, guarantees_jobs=5_000,
              memory_backlog=100_000, memory_cap_s=60, memory_hold_s=10)


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
