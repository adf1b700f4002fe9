"""Run the chosen scenarios ``reps`` times, interleaved, and collect a :class:`Report`.

Repetitions are interleaved (every scenario once, then again) rather than back to back, so a
burst of load from something else on the machine spreads over scenarios instead of sinking one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from pgqueue._bench.context import FULL, QUICK, Context
from pgqueue._bench.database import ScratchDatabases, machine_info
from pgqueue._bench.report import Report
from pgqueue._bench.scenarios import SCENARIOS
from pgqueue._bench.stats import Figure
from pgqueue._db.bench import server_settings


class ProgressSink(Protocol):
    def start(self, total: int) -> None: ...
    def step(self, label: str) -> None: ...
    def status(self, text: str) -> None: ...


class Silent:
    def start(self, total: int) -> None:
        pass

    def step(self, label: str) -> None:
        pass

    def status(self, text: str) -> None:
        pass


def run_bench(server_dsn: str, *, quick: bool = False, reps: int = 3, scenarios: Sequence[str] = (),
              progress: ProgressSink | None = None) -> Report:
    """Measure ``scenarios`` (all when empty) on ``server_dsn``'s server, in scratch databases.

    Raises:
        ValueError: an unknown scenario name.
        pgqueue.errors.ConfigurationError: the role may not create databases.
    """
    sink = progress or Silent()
    names = list(dict.fromkeys(scenarios)) or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario {unknown[0]!r}: choose from {', '.join(SCENARIOS)}")
    sizes = QUICK if quick else FULL
    units = [(name, unit) for name in names for unit in SCENARIOS[name].units(sizes)]
    databases = ScratchDatabases(server_dsn)
    figures: dict[str, Figure] = {}
    scenario_of: dict[str, str] = {}
    context = Context(databases=databases, sizes=sizes, status=sink.status)
    sink.start(len(units) * reps + 1)
    try:
        sink.step("creating and migrating the scratch database")
        databases.create_template()
        if databases.swept:
            sink.status(f"dropped {len(databases.swept)} databases of earlier runs that were killed")
        for rep in range(reps):
            for name, unit in units:
                sink.step(f"{unit.label} ({rep + 1}/{reps})")
                for sample in unit.run(context):
                    figures.setdefault(sample.key, Figure(sample.key, sample.unit)).add(sample)
                    scenario_of[sample.key] = name
        server = server_settings(server_dsn)
    finally:
        databases.drop_all()
    settings = {
        "mode": "quick" if quick else "full", "reps": reps, "scenarios": names,
        "sizes": dataclasses.asdict(sizes),
        "worker": "pgqueue Worker in spawned processes (default Settings), no-op handler (async unless *_sync); "
                  "library logging (structlog not configured)",
        "enqueue": "App.enqueue on an autocommit psycopg connection; enqueue_many committed per batch",
        "database": f"{databases.prefix}: migrated once, cloned afresh for every scenario and repetition, "
                    "all dropped at the end",
        # Left on the server by earlier runs that were killed (their marker session gone).
        "abandoned_databases_dropped": databases.swept,
    }
    order = {key: i for i, key in enumerate(figures)}
    ordered = dict(sorted(figures.items(), key=lambda kv: (names.index(scenario_of[kv[0]]), order[kv[0]])))
    return Report(figures=ordered, machine=machine_info(), server=server, settings=settings, scenario_of=scenario_of)
