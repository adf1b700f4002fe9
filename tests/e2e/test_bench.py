"""`pgqueue bench`: it runs and reports every figure. Never any timing assertion (CONTRACT §9)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys

import psycopg
import pytest

from pgqueue._db.databases import ScratchRun, create_database, drop_database
from tests.helpers import wait_until

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


def test_databases_a_killed_run_left_are_dropped_by_the_next_run_and_a_live_runs_are_kept(dsn: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    killed = subprocess.Popen([sys.executable, "-m", "pgqueue", "bench", "--dsn", dsn, "--quick", "-s", "process"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        # Killed mid-scenario: its migrated template and a clone with workers connected to it exist.
        clone = wait_until(lambda: [n for n in bench_databases(dsn, "pgqueue_bench_") if re.fullmatch(
            r"pgqueue_bench_[0-9a-f]{8}_1", n)], timeout=120, message="the first run's first clone")[0]
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
    killed_run = clone.removesuffix("_1")
    left = bench_databases(dsn, killed_run)
    assert {killed_run, clone} <= set(left)

    # A run still going (its lock held), and databases a version without run locks left behind.
    live = ScratchRun(dsn, "pgqueue_bench", "0badc0de")
    live.hold()
    try:
        create_database(dsn, live.name)
        for stale in ("pgqueue_bench_fedcba98", "pgqueue_bench_fedcba98_3"):
            create_database(dsn, stale)
        with psycopg.connect(dsn, autocommit=True) as conn:  # the killed run's lock session has ended
            wait_until(lambda: conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                            [f"{killed_run} lock"]).fetchone() == (0,), timeout=30)

        result = run_bench(dsn, "--quick", "-s", "enqueue-single", "--json")
        assert result.returncode == 0, result.stderr[-3000:]
        remaining = set(bench_databases(dsn, "pgqueue_bench_"))
        assert not remaining & {*left, "pgqueue_bench_fedcba98", "pgqueue_bench_fedcba98_3"}
        assert live.name in remaining
        # What the run reports it dropped (a bench test running beside this one may have swept some first).
        swept = set(json.loads(result.stdout)["settings"]["swept_databases"])
        assert live.name not in swept
        assert not swept & remaining
    finally:
        live.release()
        drop_database(dsn, live.name)
