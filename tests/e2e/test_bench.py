"""`pgqueue bench`: it runs and reports every figure. Never any timing assertion (CONTRACT §9)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import psycopg
import pytest

# --quick sizes: the backlog pair is 10k vs 100k (1m in a full run).
QUICK_FIGURES = {
    "enqueue_single", "enqueue_bulk",
    "enqueue_single_typed", "enqueue_single_options", "enqueue_single_sql",
    "limits_unlimited_100k", "limits_c10000_100k", "limits_c50_100k", "limits_claim_overhead", "limits_rate_500_s",
    "chain_step_p50", "chain_step_p95", "chain_step_p99", "chain_plain_p50", "chain_plain_p95", "chain_step_ratio_p50",
    "enqueue_many_10k", "group_enqueue_10k", "group_enqueue_10k_cost",
    "process_c1", "process_c10", "process_c50", "process_p2_c50", "process_c50_sync",
    "latency_p50", "latency_p95", "latency_p99",
    "backlog_10k", "backlog_100k", "backlog_ratio",
    "churn_rate", "churn_table_mb", "churn_fresh_mb", "churn_bloat_ratio", "churn_growth",
    "churn_heap_mb", "churn_indexes_mb", "churn_vacuums", "churn_live_rows", "churn_dead_tuples", "churn_events_mb",
    "startup_worker_ms", "startup_first_job_ms", "startup_p2_worker_ms", "startup_p2_first_job_ms", "startup_p2_gap_ms",
    "physical_enqueue_single", "physical_enqueue_bulk", "physical_claim1_conn1", "physical_claim1_conn4",
    "physical_claim100_conn1", "physical_claim100_conn4",
    *(f"latency_load_c{c}_{k}" for c in (10, 50) for k in ("p50", "p95", "p99", "backlog_rate")),
    *(f"guarantees_{s}_{v}" for s in ("c10", "p2_c50") for v in (
        "baseline", "encrypted", "encrypted_ratio", "concurrency_limited", "concurrency_limited_ratio",
        "rate_limited", "rate_limited_ratio")),
    *(f"{p}_{k}" for p in ("memory_backlog_100k", "memory_running50")
      for k in ("rss_start_mb", "rss_max_mb", "rss_end_mb", "growth_mb")),
    "memory_backlog_100k_rate", "memory_backlog_100k_peak_running", "memory_running50_peak_running",
}


def run_bench(dsn: str, *args: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("COLUMNS", None)  # the table is laid out for a pipe, whatever terminal runs pytest
    return subprocess.run([sys.executable, "-m", "pgqueue", "bench", "--dsn", dsn, *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def bench_databases(dsn: str, prefix: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [prefix]).fetchall()
    return [row[0] for row in rows]


# Scenarios with tests of their own (the startup test below, tests/e2e/test_bench_scenarios.py):
# left out of the quick run here, which would otherwise take several more minutes of CI.
OWN_TESTS = {"startup": "startup_", "latency-load": "latency_load_", "guarantees": "guarantees_", "memory": "memory_"}
SCENARIOS = ("enqueue-single", "enqueue-bulk", "enqueue-paths", "process", "latency", "chain", "group-enqueue",
             "backlog", "limits", "churn", "physical")


@pytest.mark.slow
def test_quick_json_reports_every_figure_and_drops_its_databases(dsn: str) -> None:
    from pgqueue._bench.scenarios import SCENARIOS as ALL

    assert set(SCENARIOS) | set(OWN_TESTS) == set(ALL)  # a new scenario is tested here or on its own
    result = run_bench(dsn, "--quick", "--json", *(arg for name in SCENARIOS for arg in ("--scenario", name)))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)

    assert set(report["results"]) == {key for key in QUICK_FIGURES if not key.startswith(tuple(OWN_TESTS.values()))}
    for key, figure in report["results"].items():
        assert len(figure["values"]) == 1, key
        assert figure["unit"], key
        assert math.isfinite(figure["median"]), (key, figure)
        assert figure["min"] <= figure["median"] <= figure["max"], key
    # Throughputs are set against the ceiling measured in the same run.
    assert report["results"]["enqueue_single"]["ceiling"] == "physical_enqueue_single"
    assert report["results"]["process_c50"]["ceiling"] in {"physical_claim100_conn1", "physical_claim100_conn4"}
    assert report["results"]["process_c50"]["fraction_of_ceiling"] > 0
    assert report["results"]["latency_p50"]["ceiling"] is None
    assert report["results"]["latency_p50"]["median"] > 0  # timed from before the COMMIT is sent
    assert "pgqueue's retention in the worker" in report["notes"]["churn_rate"]
    assert {"cores", "memory_gb", "date"} <= set(report["machine"])
    assert {"server_version", "shared_buffers", "synchronous_commit", "fsync", "max_connections"} <= set(
        report["postgres"])
    assert report["system"] == "pgqueue"
    assert report["settings"]["mode"] == "quick"
    assert report["settings"]["reps"] == 1

    prefix = report["settings"]["database"].split(":")[0]
    assert prefix.startswith("pgqueue_bench_")
    assert bench_databases(dsn, prefix) == []


def test_a_chosen_scenario_runs_alone_and_prints_a_table(dsn: str) -> None:
    result = run_bench(dsn, "--quick", "--scenario", "enqueue-single", "--scenario", "physical")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "enqueue_single" in result.stdout
    assert "physical_claim100_conn4" in result.stdout
    assert "process_c50" not in result.stdout
    assert "PostgreSQL" in result.stdout


def test_startup_times_real_worker_spawns_up_to_every_process_running_a_job(dsn: str) -> None:
    result = run_bench(dsn, "--quick", "--json", "--scenario", "startup")
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)["results"]

    assert set(figures) == {key for key in QUICK_FIGURES if key.startswith("startup_")}
    assert all(math.isfinite(f["median"]) and f["unit"] == "ms" for f in figures.values()), figures
    # The order of events, not their speed: a worker starts before it runs a job, and the gap
    # between two children's first jobs is part of the time until both run one.
    assert 0 < figures["startup_worker_ms"]["median"] < figures["startup_first_job_ms"]["median"]
    assert 0 < figures["startup_p2_worker_ms"]["median"] < figures["startup_p2_first_job_ms"]["median"]
    assert 0 <= figures["startup_p2_gap_ms"]["median"] < figures["startup_p2_first_job_ms"]["median"]


def test_an_unknown_scenario_is_refused_in_one_line(dsn: str) -> None:
    result = run_bench(dsn, "--scenario", "nope", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pgqueue: error: unknown scenario 'nope': choose from enqueue-single, enqueue-bulk, enqueue-paths, process, "
        "latency, chain, group-enqueue, backlog, limits, churn, startup, physical, latency-load, guarantees, memory"]
