"""Job dependencies, chains and groups on a real database: the ``waiting`` state, release in the
transaction that completes the last dependency (also when two dependencies complete at once on two
connections, and when a dependent is enqueued while its dependency completes), failure policies,
retries, and the errors that leave nothing inserted.

Jobs are run by an in-process ``pgqueue.Worker`` (``run_until_empty``) or completed through the
ack statement itself (``JobStore.complete_jobs``) on connections the test controls.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

import pgqueue
from pgqueue import App, Discard, Job, JobSpec, Worker, admin
from pgqueue._db.jobs import JobStore, Outcome
from pgqueue.errors import (
    DependencyCycle,
    InvalidArgs,
    InvalidDependency,
    InvalidEnqueueOption,
    InvalidJobState,
    WorkflowNotFound,
)
from pgqueue.settings import Settings

Db = psycopg.Connection[TupleRow]
BOUND = 60.0


@pytest.fixture
def app(dsn: str) -> App:
    app = App(dsn, settings=Settings(dsn=dsn, lease_seconds=5, poll_seconds=0.5, shutdown_grace_seconds=5))
    order: list[int] = []

    @app.task(name="step")
    def step(job: Job, **_: Any) -> dict[str, Any]:
        order.append(job.id)
        return {"id": job.id, "deps": list(job.dependency_results())}

    @app.task(name="collect")
    def collect(job: Job, **_: Any) -> dict[str, Any]:
        order.append(job.id)
        return {"results": {str(k): v for k, v in job.dependency_results().items()}}

    @app.task(name="boom", max_attempts=1)
    def boom(job: Job, **_: Any) -> None:
        raise Discard("no")

    app.order = order  # type: ignore[attr-defined]
    return app


def run_all(app: App) -> None:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(Worker(app, concurrency=4).run_until_empty()), daemon=True)
    thread.start()
    thread.join(BOUND)
    assert not thread.is_alive(), "run_until_empty did not return"
    assert codes == [0]


def states(db: Db, ids: list[int]) -> list[str]:
    rows: dict[int, str] = dict(db.execute("SELECT id, state FROM pgqueue.jobs WHERE id = ANY(%s)", [ids]).fetchall())
    return [rows.get(i, "gone") for i in ids]


def events(db: Db, job_id: int) -> list[tuple[str, str | None, str | None]]:
    return [(r[0], r[1], r[2]) for r in db.execute(
        "SELECT event, from_state, to_state FROM pgqueue.job_events WHERE job_id = %s ORDER BY id", [job_id])]


def claim(db: Db, ids: list[int]) -> dict[int, str]:
    """Make ``ids`` running under fresh lease tokens, as a claim would (test set-up only)."""
    tokens = {i: str(uuid.uuid4()) for i in ids}
    for job_id, token in tokens.items():
        db.execute("UPDATE pgqueue.jobs SET state = 'running', attempt = attempt + 1, lease_token = %s "
                   "WHERE id = %s AND state = 'available'", [token, job_id])
    return tokens


def complete(conn: Db, job_id: int, token: str, result: str = '{"ok": true}') -> set[int]:
    return JobStore(conn).complete_jobs([Outcome(job_id=job_id, token=token, state="completed", result=result)])


def test_a_job_waits_until_its_dependency_completes_then_runs(app: App, conn: Db) -> None:
    first = app.enqueue(conn, "step")
    second = app.enqueue(conn, "step", depends_on=[first])
    conn.commit()
    assert states(conn, [first, second]) == ["available", "waiting"]
    run_all(app)
    assert states(conn, [first, second]) == ["completed", "completed"]
    assert app.order == [first, second]  # type: ignore[attr-defined]
    assert ("dependencies_met", "waiting", "available") in events(conn, second)
    assert events(conn, second)[0] == ("enqueued", None, "waiting")


def test_the_release_commits_with_the_ack_and_wakes_workers(conn: Db, dsn: str, app: App) -> None:
    first = app.enqueue(conn, "step")
    second = app.enqueue(conn, "step", depends_on=[first])
    conn.commit()
    tokens = claim(conn, [first])
    conn.commit()
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgqueue_jobs")
        with psycopg.connect(dsn) as acker:
            assert complete(acker, first, tokens[first]) == {first}
            # Not committed: the dependent is still waiting for everyone else.
            assert states(conn, [second]) == ["waiting"]
            conn.commit()
            acker.commit()
        assert states(conn, [second]) == ["available"]
        notifies = list(listener.notifies(timeout=2, stop_after=1))
        assert [n.payload for n in notifies] == ["default"]


def test_a_chain_runs_in_order_and_each_step_sees_the_previous_result(app: App, conn: Db) -> None:
    flow = pgqueue.chain(*[pgqueue.sig("step", {"n": n}) for n in range(12)])
    wf = app.enqueue_workflow(conn, flow)
    conn.commit()
    assert len(wf.job_ids) == 12
    run_all(app)
    assert app.order == wf.job_ids  # type: ignore[attr-defined]
    results = [r[0] for r in conn.execute("SELECT result FROM pgqueue.jobs WHERE id = ANY(%s) ORDER BY id",
                                          [wf.job_ids])]
    assert results[0]["deps"] == []
    for previous, result in zip(wf.job_ids, results[1:], strict=False):
        assert result["deps"] == [previous]
    assert {str(r[0]) for r in conn.execute("SELECT workflow_id FROM pgqueue.jobs WHERE id = ANY(%s)",
                                            [wf.job_ids])} == {wf.id}


def test_task_s_takes_the_handlers_arguments_by_position_or_name_and_checks_them(app: App, conn: Db) -> None:
    @app.task(name="render")
    def render(job: Job, report_id: int, fmt: str = "pdf") -> None: ...

    wf = app.enqueue_workflow(conn, pgqueue.chain(render.s(7, fmt="csv"), render.s(report_id=8)))
    conn.commit()

    rows = conn.execute("SELECT args FROM pgqueue.jobs WHERE id = ANY(%s) ORDER BY id", [wf.job_ids]).fetchall()
    assert [r[0] for r in rows] == [{"report_id": 7, "fmt": "csv"}, {"report_id": 8}]
    with pytest.raises(InvalidArgs, match="missing 'report_id'"):
        render.s(fmt="csv")  # type: ignore[call-arg]  # what an untyped caller gets
    with pytest.raises(InvalidArgs, match="unexpected 'zzz'"):
        render.s(report_id=1, zzz=2)  # type: ignore[call-arg]


def test_a_group_callback_runs_once_after_all_members_with_their_results(app: App, conn: Db) -> None:
    flow = pgqueue.group([pgqueue.sig("step", {"n": n}) for n in range(8)], then=pgqueue.sig("collect"))
    wf = app.enqueue_workflow(conn, flow)
    conn.commit()
    *members, callback = wf.job_ids
    assert states(conn, [callback]) == ["waiting"]
    run_all(app)
    assert app.order[-1] == callback  # type: ignore[attr-defined]
    assert app.order.count(callback) == 1  # type: ignore[attr-defined]
    (result,) = conn.execute("SELECT result FROM pgqueue.jobs WHERE id = %s", [callback]).fetchone() or (None,)
    assert sorted(int(k) for k in result["results"]) == members
    assert all(v["id"] == int(k) for k, v in result["results"].items())


def test_two_dependencies_completing_at_once_on_two_connections_release_the_dependent_once(
        app: App, conn: Db, dsn: str) -> None:
    for _ in range(10):
        a = app.enqueue(conn, "step")
        b = app.enqueue(conn, "step")
        dependent = app.enqueue(conn, "step", depends_on=[a, b])
        conn.commit()
        tokens = claim(conn, [a, b])
        conn.commit()
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def finish(job_id: int, token: str, barrier: threading.Barrier = barrier,
                   errors: list[BaseException] = errors) -> None:
            try:
                with psycopg.connect(dsn) as own:
                    barrier.wait(5)
                    assert complete(own, job_id, token) == {job_id}
                    own.commit()
            except BaseException as exc:  # noqa: BLE001 -- reported by the test thread below
                errors.append(exc)

        threads = [threading.Thread(target=finish, args=(job_id, tokens[job_id])) for job_id in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert states(conn, [a, b, dependent]) == ["completed", "completed", "available"]
        assert [e for e in events(conn, dependent) if e[0] == "dependencies_met"] == [
            ("dependencies_met", "waiting", "available")]
        assert conn.execute("SELECT pending_dependencies FROM pgqueue.jobs WHERE id = %s",
                            [dependent]).fetchone() == (0,)
        conn.commit()


def test_a_dependent_enqueued_while_its_dependency_completes_is_not_left_waiting(
        app: App, conn: Db, dsn: str) -> None:
    dependency = app.enqueue(conn, "step")
    conn.commit()
    tokens = claim(conn, [dependency])
    conn.commit()
    with psycopg.connect(dsn) as enqueuer:
        dependent = app.enqueue(enqueuer, "step", depends_on=[dependency])  # holds the dependency's lock
        done = threading.Event()

        def ack() -> None:
            with psycopg.connect(dsn) as acker:
                complete(acker, dependency, tokens[dependency])
                acker.commit()
            done.set()

        thread = threading.Thread(target=ack)
        thread.start()
        assert not done.wait(0.5), "the ack must wait for the enqueuer's lock on the dependency"
        enqueuer.commit()
        thread.join(30)
    assert done.is_set()
    assert states(conn, [dependency, dependent]) == ["completed", "available"]


def test_a_dependency_that_already_completed_releases_at_once(app: App, conn: Db) -> None:
    first = app.enqueue(conn, "step")
    conn.commit()
    run_all(app)
    second = app.enqueue(conn, "step", depends_on=[first])
    assert states(conn, [second]) == ["available"]


def test_a_failed_dependency_cancels_dependents_and_theirs_with_a_reason(app: App, conn: Db) -> None:
    wf = app.enqueue_workflow(conn, pgqueue.chain(pgqueue.sig("boom"), pgqueue.sig("step"), pgqueue.sig("step")))
    conn.commit()
    run_all(app)
    assert states(conn, wf.job_ids) == ["failed", "cancelled", "cancelled"]
    for job_id in wf.job_ids[1:]:
        assert ("cancelled", "waiting", "cancelled") in events(conn, job_id)
        (error,) = conn.execute("SELECT last_error FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone() or (None,)
        assert error["type"] == "DependencyFailed"


def test_a_dependent_with_policy_run_runs_after_a_failed_dependency(app: App, conn: Db) -> None:
    wf = app.enqueue_workflow(conn, pgqueue.group(
        [pgqueue.sig("boom"), pgqueue.sig("step")], then=pgqueue.sig("collect", on_dependency_failure="run")))
    conn.commit()
    run_all(app)
    failed, ok, callback = wf.job_ids
    assert states(conn, wf.job_ids) == ["failed", "completed", "completed"]
    (result,) = conn.execute("SELECT result FROM pgqueue.jobs WHERE id = %s", [callback]).fetchone() or (None,)
    assert result["results"][str(failed)] is None
    assert result["results"][str(ok)]["id"] == ok


def test_a_retry_that_fails_again_does_not_trigger_the_policy_until_the_last_attempt(
        app: App, conn: Db) -> None:
    @app.task(name="flaky", max_attempts=3, backoff=pgqueue.Backoff.fixed(0))
    def flaky(job: Job) -> str:
        if job.attempt < 3:
            raise RuntimeError("not yet")
        return "ok"

    wf = app.enqueue_workflow(conn, pgqueue.chain(pgqueue.sig("flaky"), pgqueue.sig("step")))
    conn.commit()
    run_all(app)
    assert states(conn, wf.job_ids) == ["completed", "completed"]


def test_retrying_the_failed_dependency_brings_back_cancelled_dependents_and_runs_them(
        app: App, conn: Db) -> None:
    attempts: list[int] = []

    @app.task(name="once-broken", max_attempts=1)
    def once_broken(job: Job) -> None:
        attempts.append(job.id)
        if len(attempts) == 1:
            raise RuntimeError("first time")

    wf = app.enqueue_workflow(conn, pgqueue.chain(pgqueue.sig("once-broken"), pgqueue.sig("step"),
                                                  pgqueue.sig("step")))
    conn.commit()
    run_all(app)
    assert states(conn, wf.job_ids) == ["failed", "cancelled", "cancelled"]
    admin.retry_job(conn, wf.job_ids[0], actor="test")
    conn.commit()
    assert states(conn, wf.job_ids) == ["available", "waiting", "waiting"]
    run_all(app)
    assert states(conn, wf.job_ids) == ["completed", "completed", "completed"]
    assert ("dependency_retried", "cancelled", "waiting") in events(conn, wf.job_ids[2])


def test_retrying_a_dependent_cancelled_by_its_failed_dependency_is_refused_not_left_waiting(
        app: App, conn: Db) -> None:
    wf = app.enqueue_workflow(conn, pgqueue.chain(pgqueue.sig("boom"), pgqueue.sig("step"), pgqueue.sig("step")))
    conn.commit()
    run_all(app)
    assert states(conn, wf.job_ids) == ["failed", "cancelled", "cancelled"]

    with pytest.raises(InvalidJobState, match=f"job {wf.job_ids[1]} waits for job {wf.job_ids[0]}, which is failed"):
        admin.retry_job(conn, wf.job_ids[1], actor="test")
    conn.rollback()

    # Nothing changed: retrying the dependency (or the workflow) is the way back, and it works.
    assert states(conn, wf.job_ids) == ["failed", "cancelled", "cancelled"]
    admin.retry_workflow(conn, wf.id, actor="test")
    conn.commit()
    assert states(conn, wf.job_ids) == ["available", "waiting", "waiting"]


def test_retrying_a_dependent_whose_dependency_was_deleted_is_refused(app: App, conn: Db) -> None:
    first = app.enqueue(conn, "step", delay=3600)
    dependent = app.enqueue(conn, "step", depends_on=[first])
    conn.commit()
    admin.delete_job(conn, first, actor="test")
    conn.commit()
    assert states(conn, [dependent]) == ["cancelled"]

    with pytest.raises(InvalidJobState, match=f"job {dependent} waits for job {first}, which was deleted"):
        admin.retry_job(conn, dependent, actor="test")


def test_retrying_a_workflow_whose_failed_step_was_deleted_is_refused_and_changes_nothing(
        app: App, conn: Db) -> None:
    wf = app.enqueue_workflow(conn, pgqueue.chain(
        pgqueue.group([pgqueue.sig("boom"), pgqueue.sig("boom")], then=pgqueue.sig("collect")), pgqueue.sig("step")))
    conn.commit()
    run_all(app)
    deleted, failed, callback, _ = wf.job_ids
    assert states(conn, wf.job_ids) == ["failed", "failed", "cancelled", "cancelled"]
    admin.delete_job(conn, deleted, actor="test")
    conn.commit()

    # Retried, the callback would wait for ever for the deleted member (and the last step for it).
    with pytest.raises(InvalidJobState, match=(
            f"workflow {wf.id} was not retried: job {callback} \\(collect\\) waits for job {deleted}, "
            "which was deleted, so it could never run again; enqueue the steps")):
        admin.retry_workflow(conn, wf.id, actor="test")
    conn.commit()
    assert states(conn, wf.job_ids) == ["gone", "failed", "cancelled", "cancelled"]
    assert ("retried", "failed", "available") not in events(conn, failed)
    assert admin.get_workflow(conn, wf.id).state == "failed"


@pytest.mark.parametrize("retry", ["job", "failed"])
def test_retrying_a_member_does_not_leave_a_callback_waiting_for_a_deleted_member(
        app: App, conn: Db, retry: str) -> None:
    wf = app.enqueue_workflow(conn, pgqueue.group([pgqueue.sig("boom"), pgqueue.sig("boom")],
                                                  then=pgqueue.sig("collect")))
    conn.commit()
    run_all(app)
    deleted, member, callback = wf.job_ids
    assert states(conn, wf.job_ids) == ["failed", "failed", "cancelled"]
    admin.delete_job(conn, deleted, actor="test")
    conn.commit()

    # The retry brings the callback back (its failed member is retried), but it could only wait
    # for ever for the deleted one: its policy cancels it again, in the same transaction.
    if retry == "job":
        admin.retry_job(conn, member, actor="alice")
    else:
        assert admin.retry_failed(conn, actor="alice") == [member]
    conn.commit()
    assert states(conn, wf.job_ids) == ["gone", "available", "cancelled"]
    assert events(conn, callback)[-2:] == [("dependency_retried", "cancelled", "waiting"),
                                           ("cancelled", "waiting", "cancelled")]
    row = conn.execute("SELECT actor, detail FROM pgqueue.job_events WHERE job_id = %s ORDER BY id DESC LIMIT 1",
                       [callback]).fetchone()
    assert row == ("alice", {"reason": "dependency deleted", "source": "api", "dependencies": [deleted]})
    run_all(app)
    assert states(conn, wf.job_ids) == ["gone", "failed", "cancelled"]  # nothing is left waiting


def test_retrying_a_workflow_whose_job_waits_for_a_failed_job_of_another_workflow_is_refused(
        app: App, conn: Db) -> None:
    ours = app.enqueue_workflow(conn, pgqueue.chain(pgqueue.sig("step")))
    theirs = app.enqueue_workflow(conn, pgqueue.chain(pgqueue.sig("boom")))
    joined = app.enqueue(conn, "step", depends_on=[ours.job_ids[0], theirs.job_ids[0]])
    conn.commit()
    run_all(app)
    assert admin.get_workflow(conn, joined).id == ours.id
    assert states(conn, [*ours.job_ids, joined]) == ["completed", "cancelled"]

    with pytest.raises(InvalidJobState, match=(
            f"job {joined} \\(step\\) waits for job {theirs.job_ids[0]} of another workflow, which is failed: "
            f"retry job {theirs.job_ids[0]} first")):
        admin.retry_workflow(conn, ours.id, actor="test")
    conn.rollback()

    # The way out the message names: retrying that job brings ours back, and it runs.
    admin.retry_job(conn, theirs.job_ids[0], actor="test")
    conn.commit()
    assert states(conn, [joined]) == ["waiting"]


def test_retrying_a_job_cancelled_while_its_dependency_is_unfinished_waits_again(app: App, conn: Db) -> None:
    wf = app.enqueue_workflow(conn, pgqueue.chain(pgqueue.sig("step", delay=3600), pgqueue.sig("step")))
    conn.commit()
    admin.cancel_job(conn, wf.job_ids[1], actor="test")
    conn.commit()

    assert admin.retry_job(conn, wf.job_ids[1], actor="test").state == "waiting"


def test_cancelling_a_waiting_job_cancels_its_dependents(app: App, conn: Db) -> None:
    wf = app.enqueue_workflow(conn, pgqueue.chain(pgqueue.sig("step", delay=3600), pgqueue.sig("step"),
                                                  pgqueue.sig("step")))
    conn.commit()
    admin.cancel_job(conn, wf.job_ids[1], actor="test")
    conn.commit()
    assert states(conn, wf.job_ids) == ["scheduled", "cancelled", "cancelled"]


def test_deleting_an_unfinished_dependency_applies_the_policy(app: App, conn: Db) -> None:
    first = app.enqueue(conn, "step", delay=3600)
    cancel = app.enqueue(conn, "step", depends_on=[first])
    run = app.enqueue(conn, "step", depends_on=[first], on_dependency_failure="run")
    conn.commit()
    admin.delete_job(conn, first, actor="test")
    conn.commit()
    assert states(conn, [first, cancel, run]) == ["gone", "cancelled", "available"]


def test_unknown_and_pruned_dependencies_are_refused_and_nothing_is_inserted(app: App, conn: Db) -> None:
    before = conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone()
    with pytest.raises(InvalidDependency, match="job 424242 does not exist"):
        app.enqueue(conn, "step", depends_on=[424242])
    with pytest.raises(InvalidDependency, match="does not exist"):
        app.enqueue_many(conn, [JobSpec("step"), JobSpec("step", depends_on=[424242])])
    with pytest.raises(InvalidDependency, match="positive integer"):
        app.enqueue(conn, "step", depends_on=["7"])  # type: ignore[list-item]
    assert conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == before
    assert conn.execute("SELECT count(*) FROM pgqueue.job_dependencies").fetchone() == (0,)


def test_a_cycle_in_a_batch_is_refused_and_nothing_is_inserted(app: App, conn: Db) -> None:
    a = JobSpec("step")
    b = JobSpec("step", depends_on=[a])
    object.__setattr__(a, "depends_on", [b])  # a frozen spec cannot be built in a cycle otherwise
    with pytest.raises(DependencyCycle, match=r"positions \[0, 1\]"):
        app.enqueue_many(conn, [a, b, JobSpec("step")])
    with pytest.raises(InvalidDependency, match="not in the same batch"):
        app.enqueue_many(conn, [JobSpec("step", depends_on=[JobSpec("step")])])
    assert conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (0,)


def test_depending_on_a_failed_job_with_policy_cancel_is_refused(app: App, conn: Db) -> None:
    failed = app.enqueue(conn, "boom")
    conn.commit()
    run_all(app)
    with pytest.raises(InvalidDependency, match="is failed"):
        app.enqueue(conn, "step", depends_on=[failed])
    job_id = app.enqueue(conn, "step", depends_on=[failed], on_dependency_failure="run")
    assert states(conn, [job_id]) == ["available"]


def test_options_are_checked(app: App, conn: Db) -> None:
    with pytest.raises(InvalidEnqueueOption, match="on_dependency_failure"):
        app.enqueue(conn, "step", depends_on=[1], on_dependency_failure="ignore")
    first = app.enqueue(conn, "step")
    with pytest.raises(InvalidEnqueueOption, match="unique_key"):
        app.enqueue(conn, "step", depends_on=[first], unique_key="k")



def test_a_dependent_job_keeps_its_group(app: App, conn: Db) -> None:
    first = app.enqueue(conn, "step")
    single = app.enqueue(conn, "step", depends_on=[first], group="patient:1")
    parent = JobSpec("step", group="patient:2")
    batch = app.enqueue_many(conn, [parent, JobSpec("step", depends_on=[parent], group="patient:2")])
    rows: dict[int, tuple[str, str | None]] = dict(conn.execute(
        "SELECT id, (state, group_key) FROM pgqueue.jobs WHERE id = ANY(%s)", [[single, *batch]]).fetchall())
    assert rows == {single: ("waiting", "patient:1"), batch[0]: ("available", "patient:2"),
                    batch[1]: ("waiting", "patient:2")}


def test_enqueue_many_with_dependencies_within_the_batch(app: App, conn: Db) -> None:
    parent = JobSpec("step")
    ids = app.enqueue_many(conn, [parent, JobSpec("step", depends_on=[parent]), JobSpec("step")])
    assert states(conn, ids) == ["available", "waiting", "available"]


def test_enqueue_async_takes_depends_on(app: App, dsn: str) -> None:
    import asyncio

    async def go() -> tuple[int, int]:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            first = await app.enqueue_async(aconn, "step")
            second = await app.enqueue_async(aconn, "step", depends_on=[first])
            await aconn.commit()
            return first, second

    first, second = asyncio.run(go())
    with psycopg.connect(dsn) as db:
        assert states(db, [first, second]) == ["available", "waiting"]


def test_retention_keeps_a_completed_job_that_a_waiting_job_depends_on(app: App, conn: Db, dsn: str) -> None:
    first = app.enqueue(conn, "step")
    blocker = app.enqueue(conn, "step", delay=3600)
    waiting = app.enqueue(conn, "step", depends_on=[first, blocker])
    conn.commit()
    run_all(app)
    conn.execute("UPDATE pgqueue.jobs SET finished_at = now() - interval '30 days' WHERE id = %s", [first])
    conn.commit()
    from pgqueue import _retention

    with psycopg.connect(dsn, autocommit=True) as own:
        report = _retention.prune(own, _retention.RetentionPolicy(60.0, 60.0, None), "test")
    assert report.completed == 0
    assert states(conn, [first, waiting]) == ["completed", "waiting"]
    conn.execute("UPDATE pgqueue.jobs SET state = 'cancelled', finished_at = now() WHERE id = %s", [waiting])
    conn.commit()
    with psycopg.connect(dsn, autocommit=True) as own:
        report = _retention.prune(own, _retention.RetentionPolicy(60.0, 60.0, None), "test")
    assert states(conn, [first]) == ["gone"]



def test_dependency_results_are_decrypted_for_the_next_step(dsn: str, conn: Db) -> None:
    from pgqueue._crypto import generate_key

    app = App(dsn, settings=Settings(dsn=dsn, lease_seconds=5, poll_seconds=0.5, shutdown_grace_seconds=5,
                                     encryption_keys=(generate_key(),)))
    seen: list[dict[int, Any]] = []

    @app.task(name="secret", encrypt=True)
    def secret(job: Job) -> dict[str, str]:
        return {"mrn": "12345"}

    @app.task(name="reader")
    def reader(job: Job) -> None:
        seen.append(job.dependency_results())

    wf = app.enqueue_workflow(conn, pgqueue.chain(pgqueue.sig("secret"), pgqueue.sig("reader")))
    conn.commit()
    run_all(app)
    assert seen == [{wf.job_ids[0]: {"mrn": "12345"}}]
    stored = conn.execute("SELECT result, result_encrypted IS NOT NULL FROM pgqueue.jobs WHERE id = %s",
                          [wf.job_ids[0]]).fetchone()
    assert stored == (None, True)


def test_sql_enqueue_and_task_options_take_depends_on(app: App, conn: Db) -> None:
    first = app.enqueue(conn, "step")
    (from_sql,) = conn.execute("SELECT pgqueue.enqueue('step', '{}', depends_on => ARRAY[%s]::bigint[], "
                               "on_dependency_failure => 'run')", [first]).fetchone() or (None,)
    from_options = app.tasks["step"].options(depends_on=[first]).enqueue(conn)
    conn.commit()
    assert states(conn, [first, from_sql, from_options]) == ["available", "waiting", "waiting"]
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="job '424242' does not exist"):
        conn.execute("SELECT pgqueue.enqueue('step', '{}', depends_on => ARRAY[424242]::bigint[])")
    conn.rollback()
    run_all(app)
    assert states(conn, [first, from_sql, from_options]) == ["completed"] * 3


def test_queue_listings_count_waiting_jobs(app: App, conn: Db) -> None:
    first = app.enqueue(conn, "step", queue="reports")
    app.enqueue(conn, "step", queue="reports", depends_on=[first])
    conn.commit()
    (reports,) = [q for q in admin.list_queues(conn) if q.name == "reports"]
    assert (reports.waiting, reports.available) == (1, 1)
    page = admin.list_jobs(conn, state="waiting")
    assert [job.task for job in page.items] == ["step"]


@pytest.mark.parametrize("wanted", ["²", "9" * 5000, "not-a-uuid"])
def test_a_workflow_id_that_is_neither_a_job_id_nor_a_uuid_is_workflow_not_found(conn: Db, wanted: str) -> None:
    # "²" passed str.isdigit() and then failed int(); 5000 digits are over int()'s limit.
    with pytest.raises(WorkflowNotFound, match="is not a UUID"):
        admin.get_workflow(conn, wanted)


def test_the_head_of_a_5000_job_group_is_its_first_50_rows_and_counts_for_all(app: App, conn: Db) -> None:
    # What the dashboard's job page polls: it loaded the whole workflow each refresh.
    wf = app.enqueue_workflow(conn, pgqueue.group([pgqueue.sig("step", {"n": n}) for n in range(5000)],
                                                  then=pgqueue.sig("collect")))
    conn.commit()
    members, callback = wf.job_ids[:-1], wf.job_ids[-1]
    admin.cancel_job(conn, members[-1], actor="test")  # its callback is cancelled with it
    conn.commit()

    head = admin.get_workflow_head(conn, wf.id, limit=50)
    assert [job.id for job in head.jobs] == members[:50]
    assert head.counts == {"available": 4999, "cancelled": 2}
    assert (head.total, head.hidden, head.state) == (5001, 4951, "running")
    assert head.jobs[0].depends_on == []

    # The job a page is about is listed too, wherever it is; a job id finds its workflow.
    mine = admin.get_workflow_head(conn, callback, limit=50, include=callback)
    assert [job.id for job in mine.jobs] == [*members[:50], callback]
    assert mine.jobs[-1].depends_on == members
    assert mine.jobs[-1].state == "cancelled"
    assert mine.hidden == 4950
    whole = admin.get_workflow(conn, wf.id)
    assert mine.counts == whole.counts
    assert mine.state == whole.state

    with pytest.raises(WorkflowNotFound):
        admin.get_workflow_head(conn, str(uuid.uuid4()))
