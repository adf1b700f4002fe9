"""Workflows under real ``pgqueue worker`` processes: many groups with a callback across four
workers, one of them SIGKILLed midway (which changes nothing but timing), and a chain whose steps
start strictly one after another.
"""

from __future__ import annotations

import signal

import psycopg
import pytest
from psycopg.rows import TupleRow

import pgqueue
from tests.e2e.conftest import E2E_DIR, LEASE_SECONDS, POLL_SECONDS
from tests.e2e.workflow_app import EXECUTIONS_DDL
from tests.helpers import wait_until
from tests.plugins.processes import ProcessApp, SpawnWorker, wait_for_registration

Db = psycopg.Connection[TupleRow]

GROUPS = 60  # the 1,000 groups of 10, scaled down for CI; the property is the same
MEMBERS = 10


@pytest.fixture
def process_app() -> ProcessApp:
    return ProcessApp("workflow_app:app", cwd=E2E_DIR, executions_ddl=EXECUTIONS_DDL, concurrency=8,
                      lease_seconds=LEASE_SECONDS, poll_seconds=POLL_SECONDS)


def count(db: Db, query: str, params: list[object] | None = None) -> int:
    row = db.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def test_every_group_callback_runs_once_after_its_members_even_when_a_worker_is_killed(
        worker_dsn: str, db: Db, spawn_worker: SpawnWorker) -> None:
    app = pgqueue.App(worker_dsn)
    workflows = []
    with psycopg.connect(worker_dsn) as conn:
        for _ in range(GROUPS):
            flow = pgqueue.group([pgqueue.sig("member", {"seconds": 0.05}) for _ in range(MEMBERS)],
                                 then=pgqueue.sig("callback"))
            workflows.append(app.enqueue_workflow(conn, flow))
        conn.commit()
    callbacks = [wf.job_ids[-1] for wf in workflows]
    all_ids = [job_id for wf in workflows for job_id in wf.job_ids]

    workers = [spawn_worker(worker_dsn) for _ in range(4)]
    for worker in workers:
        wait_for_registration(db, worker)
    # Kill one worker while it runs jobs (members sleep, so it holds some), then replace it.
    victim = workers[0]
    wait_until(lambda: count(db, "SELECT count(DISTINCT pid) FROM wf_executions WHERE pid = %s", [victim.pid]) > 0,
               timeout=60, message="the victim to run a job")
    victim.send(signal.SIGKILL)
    victim.wait(10)
    workers.append(spawn_worker(worker_dsn))

    wait_until(lambda: count(db, "SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) AND state = 'completed'",
                             [all_ids]) == len(all_ids),
               timeout=180, message="every job of every group to complete")

    # Exactly one completion per callback, and every execution of it (a second one only if the
    # killed worker held it) started after all its members had completed.
    assert count(db, "SELECT count(*) FROM pgqueue.job_events WHERE event = 'completed' AND job_id = ANY(%s)",
                 [callbacks]) == GROUPS
    assert count(db, "SELECT count(*) FROM pgqueue.job_events WHERE event = 'dependencies_met' "
                     "AND job_id = ANY(%s)", [callbacks]) == GROUPS
    rows = db.execute("SELECT job_id, pid, unfinished, results FROM wf_executions WHERE job_id = ANY(%s)",
                      [callbacks]).fetchall()
    by_job: dict[int, list[tuple[int, int, list[int]]]] = {}
    for job_id, pid, unfinished, results in rows:
        by_job.setdefault(job_id, []).append((pid, unfinished, results))
    assert set(by_job) == set(callbacks)
    for wf in workflows:
        runs = by_job[wf.job_ids[-1]]
        survivors = [run for run in runs if run[0] != victim.pid]
        assert len(survivors) == 1, runs
        for _pid, unfinished, results in runs:
            assert unfinished == 0
            assert results == wf.job_ids[:-1]
    late = count(db, """
        SELECT count(*) FROM wf_executions AS x
        JOIN pgqueue.job_dependencies AS e ON e.job_id = x.job_id
        JOIN pgqueue.jobs AS m ON m.id = e.depends_on
        WHERE x.job_id = ANY(%s) AND x.started_at < m.finished_at""", [callbacks])
    assert late == 0


def test_a_chain_runs_its_steps_strictly_in_order(worker_dsn: str, db: Db, spawn_worker: SpawnWorker) -> None:
    steps = 30
    app = pgqueue.App(worker_dsn)
    with psycopg.connect(worker_dsn) as conn:
        wf = app.enqueue_workflow(conn, pgqueue.chain(*[pgqueue.sig("member") for _ in range(steps)]))
        conn.commit()
    for _ in range(2):
        spawn_worker(worker_dsn)
    wait_until(lambda: count(db, "SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) AND state = 'completed'",
                             [wf.job_ids]) == steps, timeout=120, message="the chain to complete")
    started = [row[0] for row in db.execute(
        "SELECT job_id FROM wf_executions WHERE job_id = ANY(%s) ORDER BY started_at, id", [wf.job_ids])]
    assert started == wf.job_ids
    overlap = count(db, """
        SELECT count(*) FROM wf_executions AS x
        JOIN pgqueue.job_dependencies AS e ON e.job_id = x.job_id
        JOIN pgqueue.jobs AS previous ON previous.id = e.depends_on
        WHERE x.job_id = ANY(%s) AND x.started_at < previous.finished_at""", [wf.job_ids])
    assert overlap == 0
