"""`pgqueue soak`: a short seeded soak through the real CLI keeps the books, and the fault plan is
reproducible from its seed.

The soak runs on a private PostgreSQL server (embedded binaries, fresh /tmp home) so that its chaos
loop may restart the database as well as SIGKILL workers and schedulers and terminate backends.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pgqueue._soak.chaos import BACKEND_TERMINATE, DATABASE_RESTART, WORKER_SIGKILL, plan_faults
from pgqueue._soak.processes import Child, child_env, scheduler_child, worker_child

# Every figure the scoreboard requires to be zero.
ZERO_FIGURES = (
    "lost", "stuck_running", "double_inserts", "duplicate_outcomes", "terminal_twice", "duplicate_cron_runs",
    "reexecuted_jobs_unexplained", "completed_without_execution", "audit_missing_enqueued",
    "audit_missing_terminal", "audit_verify_problems", "unexpected_exits", "unclean_stops", "enqueuer_shortfall",
)
SHORT_SOAK = ("--private-server", "--jobs", "3000", "--minutes", "0.75", "--seed", "7",
              "--workers", "2", "--schedulers", "2", "--json")


@pytest.mark.slow
def test_short_seeded_soak_under_chaos_keeps_the_books() -> None:
    result = subprocess.run([sys.executable, "-m", "pgqueue", "soak", *SHORT_SOAK],
                            capture_output=True, text=True, timeout=400)
    assert result.stdout.strip(), result.stderr[-4000:]
    board = json.loads(result.stdout)
    failing = [check for check in board["checks"] if not check["ok"]]
    assert result.returncode == 0, f"{failing}\n{board['notes']}\n{result.stderr[-3000:]}"
    assert board["ok"] is True
    figures = board["figures"]
    assert {key: figures[key] for key in ZERO_FIGURES} == dict.fromkeys(ZERO_FIGURES, 0)
    assert figures["enqueued"] == figures["terminal"] >= 3000
    assert board["info"]["cron_runs"] > 0
    # The chaos really happened: the plan for seed 7 has every kind, and each one was injected.
    faults = board["faults"]
    for kind in (WORKER_SIGKILL, BACKEND_TERMINATE, DATABASE_RESTART):
        assert faults[kind] > 0, faults
    # The audit chain was really built and checked: the workers' leaders sealed most of the trail
    # during the run (the referee only seals the tail), and verify recomputed all of it.
    info = board["info"]
    assert info["audit_seals"] > 1
    assert info["audit_events_verified"] > 2 * figures["enqueued"]
    assert info["audit_sealed_by_the_referee"] < info["audit_events_verified"]
    assert "child process logs: /tmp/pgqueue-soak-" in result.stderr


def test_fault_plan_is_reproducible_from_the_seed_and_bounded() -> None:
    first = plan_faults(7, 600, restart_database=True)
    assert first == plan_faults(7, 600, restart_database=True)
    assert first != plan_faults(8, 600, restart_database=True)
    assert all(later.at - earlier.at >= 2.0 for earlier, later in itertools.pairwise(first))
    restarts = [fault.at for fault in first if fault.kind == DATABASE_RESTART]
    assert restarts
    assert all(later - earlier >= 60 for earlier, later in itertools.pairwise(restarts))
    assert all(fault.kind != DATABASE_RESTART for fault in plan_faults(7, 600, restart_database=False))


@pytest.mark.parametrize("make_child", [
    lambda env, log_dir: worker_child(0, env, log_dir, concurrency=2),
    lambda env, log_dir: scheduler_child(0, env, log_dir),
], ids=["worker", "scheduler"])
def test_a_child_stopped_moments_after_its_start_still_stops_cleanly(
        dsn: str, tmp_path: Path, make_child: Callable[[dict[str, str], Path], Child]) -> None:
    # The soak's last fault may restart a child just before the soak stops them all: a SIGTERM
    # sent while it is still importing would end it by the default action (-15), counted unclean.
    child = make_child(child_env(dsn, lease_seconds=2.0, poll_seconds=0.5), tmp_path)
    child.start()
    try:
        assert child.stop(timeout=60) == 0, child.log_path.read_text(errors="replace")[-3000:]
    finally:
        child.kill()
