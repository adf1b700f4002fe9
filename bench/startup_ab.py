"""A/B of worker start-up: spawn ``pgqueue worker`` from two source trees, alternately.

    python bench/startup_ab.py --dsn postgresql://root@127.0.0.1:5432/postgres --a /tmp/pgqueue-before --rounds 7

Each round spawns, for 1 process and for ``--processes 2``, tree A's worker then tree B's (B is
this checkout unless given), with ``pgqueue._bench.startup.spawn_worker`` (the tree goes first on
the worker's PYTHONPATH), and times ``pgqueue worker --help`` from both. A tree is a directory
containing the ``pgqueue`` package, e.g. ``git archive <commit> pgqueue | tar -x -C /tmp/pgqueue-before``.
Every spawn runs with bytecode, as ``pgqueue bench --scenario startup`` does: each tree gets its own
temporary ``PYTHONPYCACHEPREFIX``, filled by untimed warm-up spawns before the first round.
Compare the ratios, not the absolute figures, on a shared machine.
"""

# ruff: noqa: T201 - a command-line script: printing is its output

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from pgqueue._bench.database import ScratchDatabases
from pgqueue._bench.startup import spawn_worker


def help_ms(tree: str, pycache: str) -> float:
    env = dict(os.environ, PYTHONPATH=tree, PYTHONPYCACHEPREFIX=pycache)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pgqueue", "worker", "--help"], env=env, capture_output=True,
                   check=True, cwd="/")
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True, help="a server where the role may create databases")
    parser.add_argument("--a", required=True, help="baseline tree")
    parser.add_argument("--b", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        help="candidate tree (default: this checkout)")
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()
    trees = {"A": options.a, "B": options.b}
    first_job: dict[tuple[str, int], list[float]] = {(t, p): [] for t in trees for p in (1, 2)}
    gaps: dict[str, list[float]] = {t: [] for t in trees}
    helps: dict[str, list[float]] = {t: [] for t in trees}
    databases = ScratchDatabases(options.dsn)
    try:
        databases.create_template()
        with databases.fresh() as dsn, tempfile.TemporaryDirectory(prefix="pgqueue-startup-ab-") as scratch:
            pycaches = {name: os.path.join(scratch, name) for name in trees}
            for name, tree in trees.items():  # untimed: compiles each tree's bytecode
                help_ms(tree, pycaches[name])
                for processes in (1, 2):
                    spawn_worker(dsn, processes=processes, python_path=tree, pycache=pycaches[name])
            for round_ in range(options.rounds):
                for name, tree in trees.items():
                    helps[name].append(help_ms(tree, pycaches[name]))
                for processes in (1, 2):
                    for name, tree in trees.items():
                        times = sorted(spawn_worker(dsn, processes=processes, python_path=tree,
                                                    pycache=pycaches[name]).first_job.values())
                        first_job[(name, processes)].append(times[-1])
                        if processes > 1:
                            gaps[name].append(times[-1] - times[0])
                print(f"round {round_ + 1}/{options.rounds} done", file=sys.stderr)
    finally:
        databases.drop_all()
    print("medians, ms            A        B    B/A")
    for label, a, b in (
            ("first job, 1 process", first_job[("A", 1)], first_job[("B", 1)]),
            ("both children, -p 2", first_job[("A", 2)], first_job[("B", 2)]),
            ("gap between children", gaps["A"], gaps["B"]),
            ("worker --help", helps["A"], helps["B"])):
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{label:22s} {ma:7.0f}  {mb:7.0f}  {mb / ma if ma else float('nan'):5.2f}")


if __name__ == "__main__":
    main()
