"""The latency-load, guarantees and memory scenarios of `pgqueue bench`, each run in a small form
on scratch databases with real worker processes. Values are checked for sanity, never for speed
(CONTRACT §9): samples exist, are finite and positive, and hang together."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import pytest

from pgqueue._bench.context import QUICK, Context, Sizes
from pgqueue._bench.database import ScratchDatabases
from pgqueue._bench.scenarios import SCENARIOS
from pgqueue._bench.stats import Sample

SMALL = dataclasses.replace(QUICK, load_backlog=20_000, load_probes=8, guarantees_jobs=1_000,
                            memory_backlog=10_000, memory_cap_s=60, memory_hold_s=2)


@pytest.fixture
def databases(pg_server_dsn: str) -> Iterator[ScratchDatabases]:
    scratch = ScratchDatabases(pg_server_dsn)
    scratch.create_template()
    try:
        yield scratch
    finally:
        scratch.drop_all()


def run_scenario(databases: ScratchDatabases, name: str, sizes: Sizes = SMALL) -> dict[str, Sample]:
    context = Context(databases=databases, sizes=sizes, status=lambda text: None)
    samples: dict[str, Sample] = {}
    for unit in SCENARIOS[name].units(sizes):
        for sample in unit.run(context):
            assert sample.key not in samples, sample.key
            samples[sample.key] = sample
    return samples


def test_latency_load_times_every_probe_while_the_backlog_drains(databases: ScratchDatabases) -> None:
    samples = run_scenario(databases, "latency-load")

    for concurrency in (10, 50):
        prefix = f"latency_load_c{concurrency}"
        p50, p95, p99 = (samples[f"{prefix}_p{p}"].value for p in (50, 95, 99))
        assert 0 < p50 <= p95 <= p99 < 10_000, (prefix, p50, p95, p99)
        note = samples[f"{prefix}_p50"].note or ""
        assert "did not start" not in note, note
        assert f"1 worker x {concurrency}" in note
        assert samples[f"{prefix}_backlog_rate"].value > 0


def test_guarantees_reports_each_variant_and_its_ratio_to_the_baseline(databases: ScratchDatabases) -> None:
    samples = run_scenario(databases, "guarantees")

    for setting in ("c10", "p2_c50"):
        baseline = samples[f"guarantees_{setting}_baseline"]
        assert baseline.value > 0
        assert baseline.note is not None
        assert "no lean mode" in baseline.note
        assert "capped" not in baseline.note
        for variant in ("encrypted", "concurrency_limited", "rate_limited"):
            value = samples[f"guarantees_{setting}_{variant}"].value
            ratio = samples[f"guarantees_{setting}_{variant}_ratio"].value
            assert value > 0, (setting, variant)
            assert ratio == pytest.approx(value / baseline.value), (setting, variant)
    assert len(samples) == 2 * 7


def test_memory_samples_the_worker_rss_through_a_backlog_and_with_50_running(databases: ScratchDatabases) -> None:
    samples = run_scenario(databases, "memory")

    for prefix in ("memory_backlog_10k", "memory_running50"):
        start, peak, end = (samples[f"{prefix}_rss_{k}_mb"].value for k in ("start", "max", "end"))
        # A Python worker with psycopg loaded is tens of MB, far below the machine's memory.
        assert 10 < start <= peak < 4096, (prefix, start, peak)
        assert 10 < end <= peak, (prefix, end, peak)
        assert math.isfinite(samples[f"{prefix}_growth_mb"].value)
        assert "capped" not in (samples[f"{prefix}_rss_start_mb"].note or "")
    assert samples["memory_backlog_10k_rate"].value > 0
    assert samples["memory_backlog_10k_peak_running"].value > 0
    assert samples["memory_running50_peak_running"].value == 50
