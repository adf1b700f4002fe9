"""Workflows under real ``pgqueue worker`` processes: many groups with a callback across four
workers, one of them SIGKILLed midway (which changes nothing but timing), and a chain whose steps
start strictly one after another.
"""

from __future__ import annotations

import json
import os
import signal

import psycopg
import pytest
from psycopg.rows import TupleRow

import pgqueue
from tests.e2e.conftest import E2E_DIR, LEASE_SECONDS, POLL_SECONDS
from tests.e2e.workflow_app import EXECUTIONS_DDL
from tests.helpers import wait_until
from tests.plugins.processes import ProcessApp, RunCli, SpawnWorker, wait_for_registration

Db = psycopg.Connection[TupleRow]

# The 1,000 groups of 10, scaled down for CI (the property is the same);
# PGQUEUE_TEST_WORKFLOW_GROUPS=1000 runs the full size.
GROUPS = int(os.environ.get("PGQUEUE_TEST_WORKFLOW_GROUPS", "60"))
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
               timeout=180 + GROUPS * 0.5, message="every job of every group to complete")

    # Exactly one completion per callback, and every execution of it (a second one only if the
    # killed worker ran it first) started after all its members had completed.
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
        # At-least-once only bites the killed worker: it may have run the callback (and even
        # completed it) before the SIGKILL; every other worker ran it at most once in total.
        survivors = [run for run in runs if run[0] != victim.pid]
        assert len(survivors) <= 1, runs
        assert len(runs) - len(survivors) <= 1, runs
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


def test_the_workflows_commands_show_cancel_and_retry_a_workflow(worker_dsn: str, db: Db, run_cli: RunCli) -> None:
    app = pgqueue.App(worker_dsn)
    with psycopg.connect(worker_dsn) as conn:
        wf = app.enqueue_workflow(conn, pgqueue.chain(pgqueue.sig("member"), pgqueue.group(
            [pgqueue.sig("member"), pgqueue.sig("member")], then=pgqueue.sig("callback"))))
        conn.commit()
    first, a, b, callback = wf.job_ids

    shown = run_cli(["workflows", "show", wf.id], dsn=worker_dsn)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == f"workflow {wf.id}: running (1 available, 3 waiting)"
    assert f"{callback} callback [waiting] after {a}, {b}" in shown.stdout
    as_json = json.loads(run_cli(["workflows", "show", str(callback), "--json"], dsn=worker_dsn).stdout)
    assert [job["id"] for job in as_json["jobs"]] == wf.job_ids
    assert as_json["jobs"][-1]["depends_on"] == [a, b]

    cancelled = run_cli(["workflows", "cancel", wf.id, "--json"], dsn=worker_dsn)
    assert json.loads(cancelled.stdout)["cancelled"] == wf.job_ids
    retried = run_cli(["workflows", "retry", wf.id, "--json"], dsn=worker_dsn)
    assert json.loads(retried.stdout)["retried"] == wf.job_ids
    states: dict[int, str] = dict(
        db.execute("SELECT id, state FROM pgqueue.jobs WHERE id = ANY(%s)", [wf.job_ids]).fetchall())
    assert [states[i] for i in wf.job_ids] == ["available", "waiting", "waiting", "waiting"]
    events = db.execute("SELECT actor, detail->>'source' FROM pgqueue.job_events WHERE job_id = %s"
                        " AND event = 'retried'", [first]).fetchall()
    assert len(events) == 1
    assert events[0][0]  # the operator (the OS user), and where the action came from:
    assert events[0][1] == "cli"

    added = run_cli(["enqueue", "member", "--depends-on", str(callback), "--json"], dsn=worker_dsn)
    assert added.returncode == 0, added.stderr
    assert db.execute("SELECT state, workflow_id::text FROM pgqueue.jobs WHERE id = %s",
                      [json.loads(added.stdout)["id"]]).fetchone() == ("waiting", wf.id)

    for args, message in ((["workflows", "show", "nope"], "is not a UUID"),
                          (["workflows", "show", "00000000-0000-0000-0000-000000000000"], "not found"),
                          (["enqueue", "member", "--depends-on", "999999"], "job 999999 does not exist")):
        failed = run_cli(args, dsn=worker_dsn)
        assert failed.returncode == 1
        assert message in failed.stderr
        assert "Traceback" not in failed.stderr


def test_workflows_retry_refuses_when_a_failed_step_was_deleted_and_leaves_nothing_waiting(
        worker_dsn: str, db: Db, run_cli: RunCli, spawn_worker: SpawnWorker) -> None:
    app = pgqueue.App(worker_dsn)
    with psycopg.connect(worker_dsn) as conn:
        wf = app.enqueue_workflow(conn, pgqueue.chain(
            pgqueue.sig("member"), pgqueue.sig("refuse"), pgqueue.sig("member"), pgqueue.sig("member")))
        conn.commit()
    _, failed, third, fourth = wf.job_ids
    worker = spawn_worker(worker_dsn)

    def workflow_states() -> list[str]:
        found: dict[int, str] = dict(
            db.execute("SELECT id, state FROM pgqueue.jobs WHERE id = ANY(%s)", [wf.job_ids]).fetchall())
        return [found.get(job_id, "gone") for job_id in wf.job_ids]

    wait_until(lambda: workflow_states() == ["completed", "failed", "cancelled", "cancelled"], timeout=60,
               message="the chain to stop at its failed step")
    deleted = run_cli(["jobs", "delete", str(failed)], dsn=worker_dsn)
    assert deleted.returncode == 0, deleted.stderr

    retried = run_cli(["workflows", "retry", wf.id], dsn=worker_dsn)
    assert retried.returncode == 1, retried.stdout
    assert retried.stderr == (
        f"pgqueue: error: workflow {wf.id} was not retried: job {third} (member) waits for job {failed}, which was "
        "deleted, so it could never run again; enqueue the steps that depend on it as a new workflow, or delete "
        "this one's jobs\n")
    # Refused as a whole: nothing waits, nothing was audited as retried, and the worker (still
    # running) has nothing to do.
    assert workflow_states() == ["completed", "gone", "cancelled", "cancelled"]
    assert count(db, "SELECT count(*) FROM pgqueue.job_events WHERE job_id = ANY(%s) AND event = 'retried'",
                 [wf.job_ids]) == 0
    shown = run_cli(["workflows", "show", wf.id], dsn=worker_dsn)
    assert shown.stdout.splitlines()[0] == f"workflow {wf.id}: failed (2 cancelled, 1 completed)"
    assert worker.alive(), worker.describe()
    assert count(db, "SELECT count(*) FROM wf_executions WHERE job_id = ANY(%s)", [[third, fourth]]) == 0
