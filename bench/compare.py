"""Put ``pgqueue bench --json`` beside the peer harness's results as one markdown table.

    pgqueue bench --json > /tmp/pgqueue.json
    BENCH_REPS=3 /work/shared/peer-bench/run_all.sh          # writes ./peer-bench-results/*.json
    python bench/compare.py /tmp/pgqueue.json peer-bench-results

Cells are median (min-max) over the repetitions. "ceiling" is the ``physical_*`` figure pgqueue
bench set the row against (same run as the pgqueue column; the best of 1 and 4 connections for
batched throughput); "postgres (peer-bench)" is the peer
harness's ``physical.py`` (its run, with the peers).
"""

# ruff: noqa: T201 - a command-line script: printing is its output

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

# label, pgqueue key, key in the peers' JSON files ("key@postgres": the harness's raw-SQL column).
# The ceiling of a pgqueue figure is the one its own report names (``results.<key>.ceiling``).
ROWS: list[tuple[str, str | None, str | None]] = [
    ("enqueue, 1 job per transaction", "enqueue_single", "enqueue_single"),
    ("enqueue, bulk (pgqueue: 10k per call; peers: 50k in one call)", "enqueue_bulk", "enqueue_bulk"),
    ("process no-op, 1 process x concurrency 1", "process_c1", "process_c1"),
    ("process no-op, concurrency 10", "process_c10", "process_c10"),
    ("process no-op, concurrency 50", "process_c50", None),
    ("process no-op, 2 processes x 50", "process_p2_c50", None),
    ("process no-op, concurrency 50, sync handler", "process_c50_sync", None),
    ("process no-op, pgqueuer unlimited, batch 10", None, "process_unlim_b10"),
    ("process no-op, pgqueuer unlimited, batch 100", None, "process_unlim_b100"),
    ("latency enqueue commit -> handler start, p50 (ms)", "latency_p50", "latency_p50"),
    ("latency p95 (ms)", "latency_p95", "latency_p95"),
    ("latency p99 (ms)", "latency_p99", "latency_p99"),
    ("backlog 10k waiting, 1 x 50", "backlog_10k", None),
    ("backlog 1M waiting, 1 x 50", "backlog_1m", None),
    ("backlog 100k waiting, 1 x 50", "backlog_100k", None),
    ("churn: throughput with retention on", "churn_rate", None),
    ("churn: jobs table + indexes (MB)", "churn_table_mb", None),
    ("churn: same live rows, freshly loaded (MB)", "churn_fresh_mb", None),
    ("churn: bloat ratio (x)", "churn_bloat_ratio", None),
    ("churn: dead tuples", "churn_dead_tuples", None),
    ("churn: live rows", "churn_live_rows", None),
    ("raw: INSERT 1/tx", "physical_enqueue_single", "enqueue_single@postgres"),
    ("raw: COPY", "physical_enqueue_bulk", "enqueue_bulk@postgres"),
    ("raw: claim+complete 1/tx, 1 conn", "physical_claim1_conn1", "claim1_conn1@postgres"),
    ("raw: claim+complete 1/tx, 4 conns", "physical_claim1_conn4", "claim1_conn4@postgres"),
    ("raw: claim 100 + complete, 1 conn", "physical_claim100_conn1", "claim100_conn1@postgres"),
    ("raw: claim 100 + complete, 4 conns", "physical_claim100_conn4", "claim100_conn4@postgres"),
]
PEERS = ("procrastinate", "pgqueuer")


def fmt(value: float) -> str:
    return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"


def cell(result: dict[str, Any] | None, mark: str = "") -> str:
    if not result:
        return "—"
    values = result["values"]
    median = statistics.median(values)
    if len(values) == 1:
        return f"{fmt(median)}{mark}"
    return f"{fmt(median)}{mark} ({fmt(min(values))}-{fmt(max(values))})"


def main() -> None:
    pgqueue = json.loads(Path(sys.argv[1]).read_text())
    peer_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("peer-bench-results")
    peers = {p.stem: json.loads(p.read_text()) for p in peer_dir.glob("*.json") if p.stem != "pgqueue"}
    ours = pgqueue["results"]
    print(f"| scenario | pgqueue {pgqueue['version']} | of ceiling | ceiling (pgqueue bench physical) "
          f"| postgres (peer-bench) | " + " | ".join(
              f"{p} {peers[p]['version']}" for p in PEERS if p in peers) + " |")
    print("|---|---|---|---|---|" + "---|" * sum(p in peers for p in PEERS))
    for label, key, peer_key in ROWS:
        mine = ours.get(key) if key else None
        if key and not mine:
            continue
        capped = "†" if key and "capped" in pgqueue.get("notes", {}).get(key, "") else ""
        ceiling = ours.get(mine["ceiling"]) if mine and mine.get("ceiling") else None
        fraction = f"{mine['fraction_of_ceiling']:.0%}" if mine and mine.get("fraction_of_ceiling") else ""
        if peer_key and peer_key.endswith("@postgres"):
            raw = peers.get("postgres", {}).get("results", {}).get(peer_key.split("@")[0])
            peer_cells = ["—" for p in PEERS if p in peers]
        else:
            raw = None
            peer_cells = []
            for p in PEERS:
                if p not in peers:
                    continue
                result = peers[p]["results"].get(peer_key) if peer_key else None
                mark = "†" if peer_key and "capped" in peers[p].get("notes", {}).get(peer_key, "") else ""
                peer_cells.append(cell(result, mark))
            raw = peers.get("postgres", {}).get("results", {}).get(peer_key) if peer_key else None
        print(f"| {label} | {cell(mine, capped)} | {fraction} | {cell(ceiling)} | {cell(raw)} | "
              + " | ".join(peer_cells) + " |")


if __name__ == "__main__":
    main()
