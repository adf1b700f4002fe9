"""Checking the books after a soak: every figure of the scoreboard, and whether it holds."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from pgqueue import _audit
from pgqueue._db.soak import Books
from pgqueue._soak.app import ENQUEUED_TASKS, SCHEDULE, TICK

TERMINAL_STATES = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class Check:
    key: str
    figure: str
    value: int
    must_be: str
    ok: bool

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "figure": self.figure, "value": self.value, "must_be": self.must_be, "ok": self.ok}


@dataclass
class Scoreboard:
    checks: list[Check] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def zero(self, key: str, figure: str, value: int) -> None:
        self.checks.append(Check(key, figure, value, "0", value == 0))

    def equal(self, key: str, figure: str, value: int, expected: int, must_be: str) -> None:
        self.checks.append(Check(key, figure, value, must_be, value == expected))

    def figures(self) -> dict[str, int]:
        return {check.key: check.value for check in self.checks}

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "figures": self.figures(), "checks": [c.as_json() for c in self.checks],
                "faults": self.faults, "info": self.info, "notes": self.notes}

    def renderable(self) -> RenderableType:
        table = Table(title="pgqueue soak: the books", box=box.SIMPLE_HEAVY)
        table.add_column("figure")
        table.add_column("value", justify="right")
        table.add_column("must be")
        table.add_column("", justify="center")
        for check in self.checks:
            mark = Text("ok", style="green") if check.ok else Text("FAIL", style="bold red")
            table.add_row(check.figure, str(check.value), check.must_be, mark)
        faults = Table(title="faults injected", box=box.SIMPLE)
        faults.add_column("kind")
        faults.add_column("count", justify="right")
        for kind, count in self.faults.items():
            faults.add_row(kind, str(count))
        info = Table(title="run", box=box.SIMPLE, show_header=False)
        info.add_column("key")
        info.add_column("value", overflow="fold")
        for key, value in self.info.items():
            info.add_row(key, str(value))
        notes = [Text(note, style="yellow") for note in self.notes]
        verdict = Text("ALL FIGURES HOLD" if self.ok else "SOME FIGURES DO NOT HOLD",
                       style="bold green" if self.ok else "bold red")
        return Group(table, faults, info, *notes, verdict)


def check_books(books: Books, board: Scoreboard, *, confirmed: int, killed_pids: Iterable[int]) -> None:
    """Fill ``board`` from the database; ``confirmed`` is the enqueuer's count of committed jobs."""
    states = books.states()
    rows, numbers = books.enqueued_rows(ENQUEUED_TASKS)
    cron_jobs = books.cron_jobs(TICK)
    total = sum(states.values())
    terminal = sum(n for state, n in states.items() if state in TERMINAL_STATES)
    enqueued = confirmed + cron_jobs

    board.equal("enqueued", "jobs enqueued (confirmed by the enqueuer + cron)", enqueued, enqueued, "-")
    board.equal("terminal", "jobs in a terminal state", terminal, enqueued, "= jobs enqueued")
    board.zero("lost", "lost (never terminal, or missing)", (total - terminal) + max(0, confirmed - numbers))
    board.zero("stuck_running", "stuck running after the run", states.get("running", 0))
    board.zero("double_inserts", "enqueued twice (rows beyond the enqueuer's numbers)", rows - numbers)
    board.zero("duplicate_outcomes", "duplicate outcomes (two outcome events for one attempt)",
               books.duplicate_outcomes())
    board.zero("terminal_twice", "jobs that reached a terminal state twice", books.terminal_twice())
    board.zero("duplicate_cron_runs", "duplicate cron runs (two jobs for one fire time)",
               books.duplicate_cron_runs(TICK))

    killed = set(killed_pids)
    explained = unexplained = extra_total = 0
    unexplained_examples: list[int] = []
    for job_id, extra, pids in books.extra_executions():
        extra_total += extra
        by_killed = sum(1 for pid in pids if pid in killed)
        if by_killed >= extra:
            explained += 1
        else:
            unexplained += 1
            if len(unexplained_examples) < 10:
                unexplained_examples.append(job_id)
    board.equal("reexecuted_jobs_killed", "jobs executed more than once, their worker killed", explained, explained,
                "any")
    board.zero("reexecuted_jobs_unexplained", "jobs executed more than once, no worker of theirs killed",
               unexplained)
    board.zero("completed_without_execution", "completed attempts with no recorded execution",
               books.completed_without_execution())
    no_enqueued, no_terminal = books.audit_gaps()
    board.zero("audit_missing_enqueued", "audit: jobs without an 'enqueued' event", no_enqueued)
    board.zero("audit_missing_terminal", "audit: finished jobs without their terminal event", no_terminal)
    # What `pgqueue audit verify` does: seal what is pending, then recompute the whole chain.
    sealed = _audit.seal_pending(books.conn)
    report = _audit.verify(books.conn)
    board.zero("audit_verify_problems", "audit verify: problems found (0 = passes)", len(report.problems))
    board.notes.extend(f"audit verify: {problem}" for problem in report.problems)

    board.info.update({
        "states": states,
        "cron_runs": books.cron_runs(SCHEDULE),
        "extra_executions": extra_total,
        "rescued_attempts": books.rescued_attempts(),
        "audit_seals": report.seals,
        "audit_events_verified": report.events,
        "audit_sealed_by_the_referee": sealed.events,
        "audit_head_digest": report.head_digest,
    })
    if unexplained_examples:
        board.info["unexplained_reexecution_examples"] = unexplained_examples
