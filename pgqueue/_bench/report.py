"""The results: figures keyed like the peer benchmark's, each set against PostgreSQL's ceiling.

``as_json`` is a superset of the peer harness's result file (``system``, ``version``,
``settings``, ``results.<key>.unit/values``, ``notes``), so the file can sit beside the peers'
results and be merged by the same tools.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from pgqueue import __version__
from pgqueue._bench.stats import Figure

_BATCHED_CEILING = ("physical_claim100_conn1", "physical_claim100_conn4")
_CEILINGS: dict[str, tuple[str, ...]] = {
    "enqueue_single": ("physical_enqueue_single",),
    "enqueue_bulk": ("physical_enqueue_bulk",),
    "process_c1": ("physical_claim1_conn1",),
    "churn_rate": _BATCHED_CEILING,
}


def ceiling_keys(key: str, unit: str) -> tuple[str, ...]:
    """Which ceiling figures ``key`` is compared with (the best of them is used)."""
    if key in _CEILINGS:
        return _CEILINGS[key]
    if unit == "jobs/s" and key.startswith(("process_", "backlog_")):
        return _BATCHED_CEILING
    return ()


def fmt(value: float) -> str:
    if value != value:  # NaN
        return "-"
    if abs(value) < 10:
        return f"{value:.3g}"
    return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"


@dataclass
class Report:
    figures: dict[str, Figure]
    machine: dict[str, Any]
    server: dict[str, str]
    settings: dict[str, Any]
    scenario_of: dict[str, str] = field(default_factory=dict)

    def ceiling(self, figure: Figure) -> tuple[str, float] | None:
        candidates = [self.figures[k] for k in ceiling_keys(figure.key, figure.unit) if k in self.figures]
        if not candidates:
            return None
        best = max(candidates, key=lambda f: f.median)
        return best.key, best.median

    def fraction(self, figure: Figure) -> float | None:
        ceiling = self.ceiling(figure)
        return figure.median / ceiling[1] if ceiling and ceiling[1] > 0 else None

    def as_json(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for key, figure in self.figures.items():
            ceiling = self.ceiling(figure)
            results[key] = {
                "unit": figure.unit, "values": [round(v, 3) for v in figure.values],
                "median": round(figure.median, 3), "min": round(figure.low, 3), "max": round(figure.high, 3),
                "ceiling": ceiling[0] if ceiling else None,
                "fraction_of_ceiling": round(f, 4) if (f := self.fraction(figure)) is not None else None,
            }
        return {
            "system": "pgqueue", "version": __version__, "settings": self.settings,
            "machine": self.machine, "postgres": self.server, "results": results,
            "notes": {key: "; ".join(f.notes) for key, f in self.figures.items() if f.notes},
        }

    def header(self) -> Text:
        m, s = self.machine, self.server
        return Text.assemble(
            (f"pgqueue {__version__} bench", "bold"),
            f" - {m['date']}, {self.settings['mode']}, {self.settings['reps']} rep(s); median (min-max)\n",
            f"machine: {m['cores']} cores, {m['memory_gb']} GB, {m['platform']}, Python {m['python']}\n",
            f"PostgreSQL {s.get('server_version', '?')}: shared_buffers={s.get('shared_buffers')}, "
            f"synchronous_commit={s.get('synchronous_commit')}, fsync={s.get('fsync')}, "
            f"max_connections={s.get('max_connections')}, work_mem={s.get('work_mem')}, "
            f"autovacuum={s.get('autovacuum')}",
        )

    def table(self) -> Table:
        table = Table(title_justify="left")
        for name, justify in (("scenario", "left"), ("figure", "left"), ("median", "right"),
                              ("min-max", "right"), ("unit", "left"), ("of ceiling", "right")):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        previous = None
        for key, figure in self.figures.items():
            scenario = self.scenario_of.get(key, "")
            if previous is not None and scenario != previous:
                table.add_section()
            fraction = self.fraction(figure)
            table.add_row(
                scenario if scenario != previous else "", key + ("*" if figure.notes else ""), fmt(figure.median),
                f"{fmt(figure.low)}-{fmt(figure.high)}" if len(figure.values) > 1 else "",
                figure.unit, f"{fraction:.0%}" if fraction is not None else "")
            previous = scenario
        return table

    def notes(self) -> Text:
        lines = [f"* {key}: {'; '.join(f.notes)}" for key, f in self.figures.items() if f.notes]
        lines.append("of ceiling: the median over the best matching physical_* median (enqueue_single vs "
                     "INSERT 1/tx, enqueue_bulk vs COPY, process_c1 vs claim 1/tx, other throughputs vs the "
                     "best of claim 100/tx on 1 and 4 connections).")
        return Text("\n".join(lines), style="dim")

    def renderable(self) -> Group:
        return Group(self.header(), self.table(), self.notes())
