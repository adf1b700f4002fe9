"""A/B: run ``pgqueue bench`` from two source trees, alternately, and compare medians key by key.

    python bench/ab.py --dsn postgresql://root@127.0.0.1:5432/postgres --rounds 5 \
        --a /work/main --b /tmp/pgqueue-experiment -- --quick --scenario process

Each round runs A then B (one ``--reps 1`` bench each, after the ``--``), so both see the same
background load over time; on a shared machine compare the ratio B/A, not the absolute figures.
A tree is a directory containing the ``pgqueue`` package (it is put first on PYTHONPATH, for the
bench and for the worker processes it starts).
"""

# ruff: noqa: T201 - a command-line script: printing is its output

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict


def run(tree: str, dsn: str, extra: list[str]) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=tree)
    argv = [sys.executable, "-m", "pgqueue", "bench", "--dsn", dsn, "--json", "--reps", "1", *extra]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise SystemExit(f"bench failed in {tree}:\n{result.stderr[-2000:]}")
    return {key: figure["median"] for key, figure in json.loads(result.stdout)["results"].items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--a", required=True, help="baseline tree")
    parser.add_argument("--b", required=True, help="candidate tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("extra", nargs="*", help="arguments for pgqueue bench (after --)")
    options = parser.parse_args()
    values: dict[str, dict[str, list[float]]] = {"a": defaultdict(list), "b": defaultdict(list)}
    for round_number in range(options.rounds):
        for side, tree in (("a", options.a), ("b", options.b)):
            for key, value in run(tree, options.dsn, options.extra).items():
                values[side][key].append(value)
        print(f"round {round_number + 1}/{options.rounds} done", file=sys.stderr)
    print(f"{'figure':28} {'A median':>12} {'B median':>12} {'B/A':>7}   A values | B values")
    for key in values["a"]:
        a, b = values["a"][key], values["b"].get(key, [])
        if not b:
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        ratio = f"{mb / ma:6.2f}x" if ma else "    -"
        print(f"{key:28} {ma:12,.1f} {mb:12,.1f} {ratio}   {', '.join(f'{v:,.0f}' for v in a)} | "
              f"{', '.join(f'{v:,.0f}' for v in b)}")


if __name__ == "__main__":
    main()
