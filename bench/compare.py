"""Check a peer-harness run against pgqueue's performance targets, and show ``pgqueue bench`` beside it.

    ../shared/peer-bench/run_all.sh                      # one interleaved run: ./peer-bench-results/<run-id>/
    python bench/compare.py                              # the latest run (or: a run directory)
    pgqueue bench --json > /tmp/pgqueue.json
    python bench/compare.py peer-bench-results/<run-id> --bench /tmp/pgqueue.json

The harness writes ``<run-id>/runs.jsonl`` (one record per system, scenario and repetition) and
``meta.json``; a cell here is the median over the repetitions (min-max), as in its own table. The
targets are the performance issue's: each row compares pgqueue with graphile-worker (or with
pgbench's single-INSERT rate) *within the same run*, the only comparison the harness supports.
``--bench`` adds pgqueue's own scenarios with the fraction of their physical ceiling.
"""

# ruff: noqa: T201 - a command-line script: printing is its output

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RIVAL = "graphile-worker"


@dataclass(frozen=True)
class Target:
    label: str
    scenario: str
    factor: float  # pgqueue must reach factor x the reference (or at most, when lower_is_better)
    reference_system: str = RIVAL
    reference_scenario: str | None = None  # default: the same scenario
    lower_is_better: bool = False


TARGETS = [
    Target("process, concurrency 1", "process_c1", 1.0),
    Target("process, concurrency 10", "process_c10", 2.0),
    Target("process, high-throughput setting", "process_chigh", 1.5),
    Target("wake-up latency p50", "latency_p50", 1.0, lower_is_better=True),
    Target("wake-up latency p99", "latency_p99", 1.0, lower_is_better=True),
    Target("enqueue, 1 job per transaction (vs pgbench INSERT, 1 client)", "enqueue", 0.85,
           reference_system="postgres", reference_scenario="pgbench_insert_c1"),
    Target("bulk enqueue", "bulk", 1.5),
]


def run_directory(path: Path) -> Path:
    """A run directory, given itself or the results directory (whose ``latest`` file names one)."""
    if (path / "runs.jsonl").exists():
        return path
    latest = path / "latest"
    if latest.exists():
        return path / latest.read_text().strip()
    raise SystemExit(f"{path}: neither a harness run (no runs.jsonl) nor a results directory (no latest)")


def load_run(run: Path) -> tuple[dict[str, Any], dict[tuple[str, str], list[float]]]:
    meta = json.loads((run / "meta.json").read_text())
    values: dict[tuple[str, str], list[float]] = {}
    for line in (run / "runs.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("value") is not None:
            values.setdefault((record["system"], record["scenario"]), []).append(float(record["value"]))
    return meta, values


def fmt(value: float) -> str:
    return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"


def cell(values: list[float] | None) -> str:
    if not values:
        return "—"
    median = statistics.median(values)
    return fmt(median) if len(values) == 1 else f"{fmt(median)} ({fmt(min(values))}-{fmt(max(values))})"


def target_table(values: dict[tuple[str, str], list[float]]) -> list[str]:
    lines = ["| row | pgqueue | reference | pgqueue / reference | target | met |", "|---|---|---|---|---|---|"]
    for target in TARGETS:
        ours = values.get(("pgqueue", target.scenario))
        theirs = values.get((target.reference_system, target.reference_scenario or target.scenario))
        if not ours or not theirs:
            lines.append(f"| {target.label} | {cell(ours)} | {cell(theirs)} | — | — | not measured |")
            continue
        ratio = statistics.median(ours) / statistics.median(theirs)
        met = ratio <= target.factor if target.lower_is_better else ratio >= target.factor
        bound = f"≤ {target.factor:g}x" if target.lower_is_better else f"≥ {target.factor:g}x"
        lines.append(f"| {target.label} | {cell(ours)} | {target.reference_system} {cell(theirs)} | "
                     f"{ratio:.2f} | {bound} | {'yes' if met else 'NO'} |")
    return lines


def bench_table(report: dict[str, Any]) -> list[str]:
    results = report["results"]
    lines = [f"| pgqueue bench scenario ({report.get('version', '?')}) | value | ceiling | of ceiling |",
             "|---|---|---|---|"]
    for key, result in results.items():
        if key.startswith("physical_"):
            continue
        ceiling = results.get(result["ceiling"]) if result.get("ceiling") else None
        fraction = f"{result['fraction_of_ceiling']:.0%}" if result.get("fraction_of_ceiling") else ""
        lines.append(f"| {key} | {cell(result['values'])} | {cell(ceiling['values'] if ceiling else None)} "
                     f"| {fraction} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, default=Path("peer-bench-results"),
                        help="a harness run directory, or the results directory (its latest run)")
    parser.add_argument("--bench", type=Path, help="`pgqueue bench --json` output to show beside it")
    options = parser.parse_args()
    run = run_directory(options.run)
    meta, values = load_run(run)
    versions = ", ".join(f"{name} {info.get('version', '?')}" for name, info in meta.get("systems", {}).items())
    print(f"Peer harness run {meta.get('run_id', run.name)} ({versions}; "
          f"{meta.get('config', {}).get('reps', '?')} repetitions, medians)\n")
    print("\n".join(target_table(values)))
    if options.bench:
        print()
        print("\n".join(bench_table(json.loads(options.bench.read_text()))))


if __name__ == "__main__":
    main()
