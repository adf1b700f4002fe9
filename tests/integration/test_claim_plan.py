"""The claim query: what a batch claim takes, in what order, how it locks, and how it is planned.

Behaviour tests call ``AsyncJobStore.claim_jobs`` (what the worker loop runs) on real, concurrent
connections. The plan tests EXPLAIN both claim queries against a table holding 100k finished jobs
and 1k claimable ones: the claim must use its partial index, never scan the table's history.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

from pgqueue import App, JobSpec, admin
from pgqueue._db.jobs import CLAIM_BATCH_MAX, JOBS, AsyncJobStore
from pgqueue.jobs import Job
from pgqueue.settings import Settings
from tests.helpers import analyzed_backlog, cached_plan, empty_tables, plan_nodes, scratch_database, wait_until

Conn = psycopg.Connection[TupleRow]

FINISHED_JOBS = 100_000
CLAIMABLE_JOBS = 1_000


@pytest.fixture(scope="module")
def module_dsn(pg_server_dsn: str, template_db: str) -> Iterator[str]:
    with scratch_database(pg_server_dsn, template_db) as database_dsn:
        yield database_dsn


@pytest.fixture
def dsn(module_dsn: str) -> str:
    """Overrides the per-test database: one per module, emptied before each test (claims commit)."""
    empty_tables(module_dsn, "pgqueue.jobs", "pgqueue.job_events", "pgqueue.queues", "pgqueue.rate_starts")
    return module_dsn


@pytest.fixture
def app(dsn: str) -> App:
    return App(dsn, settings=Settings(dsn=dsn))


async def claim(dsn: str, queues: list[str] | None, limit: int, worker_id: str = "w-test") -> list[Job]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return await AsyncJobStore(conn).claim_jobs(queues, limit, worker_id)


# --- what a claim takes -----------------------------------------------------------------------


def test_concurrent_batch_claims_never_take_more_than_asked_and_never_the_same_job_twice(
        app: App, dsn: str, db: Conn) -> None:
    app.enqueue_many(None, [JobSpec("t", {"n": n}) for n in range(100)])
    claimers, batch_size = 8, 5

    async def claimer(conn: psycopg.AsyncConnection[Any], worker_id: str, go: asyncio.Event) -> list[list[int]]:
        store = AsyncJobStore(conn)
        batches: list[list[int]] = []
        await go.wait()
        while batch := await store.claim_jobs(None, batch_size, worker_id):
            batches.append([job.id for job in batch])
        return batches

    async def scenario() -> list[list[list[int]]]:
        conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(claimers)]
        go = asyncio.Event()
        try:
            tasks = [asyncio.create_task(claimer(conn, f"w{i}", go)) for i, conn in enumerate(conns)]
            go.set()
            return await asyncio.gather(*tasks)
        finally:
            for conn in conns:
                await conn.close()

    results = asyncio.run(scenario())

    batches = [batch for per_claimer in results for batch in per_claimer]
    assert all(1 <= len(batch) <= batch_size for batch in batches), [len(b) for b in batches]
    claimed = [job_id for batch in batches for job_id in batch]
    assert len(claimed) == 100
    assert len(set(claimed)) == 100, "a job was claimed twice"
    assert sum(1 for per_claimer in results if per_claimer) > 1, "one claimer took everything: no concurrency"
    assert db.execute(
        "SELECT count(*), count(DISTINCT lease_token), min(attempt), max(attempt) FROM pgqueue.jobs"
        " WHERE state = 'running'").fetchone() == (100, len(batches), 1, 1)
    assert db.execute("SELECT count(*) FROM pgqueue.job_events WHERE event = 'claimed'").fetchone() == (100,)


def test_claims_follow_priority_then_run_at_then_id(app: App, dsn: str, conn: Conn) -> None:
    now = datetime.now(UTC)
    ago = {n: now - timedelta(minutes=n) for n in range(1, 4)}
    low = app.enqueue(conn, "t", {}, priority="low", run_at=ago[3])
    normal_later = app.enqueue(conn, "t", {}, priority="normal", run_at=ago[1])
    critical_later = app.enqueue(conn, "t", {}, priority="critical", run_at=ago[1])
    normal_earlier = app.enqueue(conn, "t", {}, priority="normal", run_at=ago[2], queue="other")
    critical_earlier = app.enqueue(conn, "t", {}, priority="critical", run_at=ago[2])
    critical_earlier_too = app.enqueue(conn, "t", {}, priority="critical", run_at=ago[2])
    conn.commit()

    order = [job.id for _ in range(6) for job in asyncio.run(claim(dsn, None, 1))]

    assert order == [critical_earlier, critical_earlier_too, critical_later, normal_earlier, normal_later, low]


def test_a_claim_for_named_queues_takes_only_their_jobs_in_priority_order(app: App, dsn: str, conn: Conn) -> None:
    emails_low = app.enqueue(conn, "t", {}, queue="emails", priority="low")
    reports_high = app.enqueue(conn, "t", {}, queue="reports", priority="high")
    app.enqueue(conn, "t", {}, queue="other", priority="critical")
    conn.commit()

    claimed = asyncio.run(claim(dsn, ["emails", "reports"], 10))

    assert [job.id for job in claimed] == [reports_high, emails_low]


def test_scheduled_jobs_are_not_claimed_before_their_time(app: App, dsn: str, conn: Conn) -> None:
    app.enqueue(conn, "t", {}, delay=3600)
    conn.commit()

    assert asyncio.run(claim(dsn, None, 10)) == []


def test_jobs_of_paused_queues_are_skipped_until_the_queue_resumes(
        app: App, dsn: str, conn: Conn, db: Conn) -> None:
    paused_job = app.enqueue(conn, "t", {}, queue="paused", priority="critical")
    open_job = app.enqueue(conn, "t", {}, queue="open")
    conn.commit()
    db.execute("INSERT INTO pgqueue.queues (name, paused) VALUES ('paused', true)")

    assert asyncio.run(claim(dsn, ["paused"], 10)) == []
    assert [job.id for job in asyncio.run(claim(dsn, None, 10))] == [open_job]

    db.execute("UPDATE pgqueue.queues SET paused = false WHERE name = 'paused'")
    assert [job.id for job in asyncio.run(claim(dsn, ["paused", "open"], 10))] == [paused_job]


def test_a_claim_returns_what_the_handler_needs_and_starts_a_lease(app: App, dsn: str, conn: Conn, db: Conn) -> None:
    job_id = app.enqueue(conn, "send-email", {"to": "a@example.com"}, queue="emails", priority="high",
                         max_attempts=3, tags=["billing"])
    conn.commit()

    [claimed] = asyncio.run(claim(dsn, ["emails"], 10, worker_id="w-7"))

    assert (claimed.id, claimed.task, claimed.queue, claimed.args, claimed.attempt, claimed.max_attempts,
            claimed.priority, claimed.tags) == (job_id, "send-email", "emails", {"to": "a@example.com"}, 1, 3, 25,
                                                ("billing",))
    row = db.execute("SELECT state, worker_id, lease_token::text, started_at IS NOT NULL FROM pgqueue.jobs"
                     " WHERE id = %s", [job_id]).fetchone()
    assert row == ("running", "w-7", claimed.lease_token, True)


def test_claimed_rows_stay_open_to_key_share_locks_and_skipped_by_other_claimers(
        app: App, dsn: str, conn: Conn, db: Conn) -> None:
    ids = app.enqueue_many(conn, [JobSpec("t", {"n": n}) for n in range(4)])
    conn.commit()

    with asyncio.Runner() as runner:
        holder = runner.run(psycopg.AsyncConnection.connect(dsn))  # a claim transaction left open
        try:
            held = {job.id for job in runner.run(AsyncJobStore(holder).claim_jobs(None, 2, "w-holder"))}
            assert held == set(ids[:2])

            # Another claimer passes the held rows instead of waiting for them.
            others = {job.id for job in runner.run(claim(dsn, None, 10, "w-other"))}
            assert others == set(ids[2:])

            db.execute("SET lock_timeout = '200ms'")
            for job_id in held:
                # What a row referencing the job (an FK, an audit row) needs: FOR NO KEY UPDATE allows it.
                assert db.execute("SELECT id FROM pgqueue.jobs WHERE id = %s FOR KEY SHARE", [job_id]).fetchone()
                # ...while the row really is locked against writers (so the check above is not vacuous).
                with pytest.raises(psycopg.errors.LockNotAvailable):
                    db.execute("SELECT id FROM pgqueue.jobs WHERE id = %s FOR UPDATE", [job_id])
        finally:
            runner.run(holder.rollback())
            runner.run(holder.close())

    # Rolled back: the held jobs are claimable again.
    assert db.execute("SELECT count(*) FROM pgqueue.jobs WHERE state = 'available'").fetchone() == (2,)


# --- the plan ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def history_dsn(pg_server_dsn: str, template_db: str) -> Iterator[str]:
    """100k completed jobs (the history a busy queue keeps) and 1k claimable ones over 3 queues."""
    with scratch_database(pg_server_dsn, template_db) as database_dsn:
        with psycopg.connect(database_dsn, autocommit=True) as setup:
            setup.execute(
                "INSERT INTO pgqueue.jobs (task, queue, state, priority, args, attempt, run_at, enqueued_at,"
                "                          started_at, finished_at, result)"
                " SELECT 'done', 'q' || mod(g, 3), 'completed', 100, jsonb_build_object('n', g), 1,"
                "        now() - interval '1 day', now() - interval '1 day', now() - interval '1 day', now(), 'null'"
                " FROM generate_series(1, %s) AS g", [FINISHED_JOBS])
            setup.execute(
                "INSERT INTO pgqueue.jobs (task, queue, state, priority, args, run_at)"
                " SELECT 'todo', 'q' || mod(g, 3), 'available', mod(g, 4) * 50, jsonb_build_object('n', g),"
                "        now() - make_interval(secs => g)"
                " FROM generate_series(1, %s) AS g", [CLAIMABLE_JOBS])
            setup.execute("ANALYZE pgqueue.jobs")
        yield database_dsn


def explain(dsn: str, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("EXPLAIN (FORMAT JSON) " + query, params).fetchone()
        conn.rollback()
    assert row is not None
    document = row[0] if isinstance(row[0], list) else json.loads(row[0])
    return list(plan_nodes(document[0]["Plan"]))


CLAIM_INDEXES = {"jobs_claim_idx", "jobs_claim_any_queue_idx"}


@pytest.mark.parametrize("limit", [1, 200])
@pytest.mark.parametrize(("name", "queues", "indexes"), [
    # For named queues the planner may also walk the queue-less index in claim order and filter
    # by queue (it does for small limits): both are partial indexes over claimable rows only.
    ("claim_jobs", ["q1"], CLAIM_INDEXES),
    ("claim_jobs", ["q0", "q2"], CLAIM_INDEXES),
    ("claim_jobs_any_queue", None, {"jobs_claim_any_queue_idx"}),
])
def test_the_claim_uses_its_partial_index_and_never_scans_the_jobs_history(
        history_dsn: str, name: str, queues: list[str] | None, indexes: set[str], limit: int) -> None:
    query = getattr(JOBS, name)
    params: dict[str, Any] = {"limit": limit, "worker_id": "w-plan", "lease_token": str(uuid.uuid4())}
    if queues is not None:
        params["queues"] = queues

    nodes = explain(history_dsn, query, params)

    jobs_scans = [n for n in nodes if n.get("Relation Name") == "jobs"]
    assert not [n for n in jobs_scans if n["Node Type"] == "Seq Scan"], f"sequential scan on jobs: {jobs_scans}"
    used = {n["Index Name"] for n in nodes if "Index Name" in n}  # bitmap index scans name no relation
    assert used & indexes, f"{name} used none of {sorted(indexes)}; indexes used: {sorted(used)}"
    # Whatever finds the rows to claim, the only other way into jobs is by primary key (the UPDATE);
    # queues is probed by its primary key for the paused-queue anti-join.
    assert used <= CLAIM_INDEXES | {"jobs_pkey", "queues_pkey"}, f"unexpected indexes: {sorted(used)}"


@pytest.fixture(scope="module")
def backlog_dsn(pg_server_dsn: str, template_db: str) -> Iterator[str]:
    """A large analyzed backlog in the most common shape: 100k claimable jobs in one queue."""
    with analyzed_backlog(pg_server_dsn, template_db, 100_000) as database_dsn:
        yield database_dsn


@pytest.mark.parametrize(("name", "queues"), [("claim_jobs", ["default"]), ("claim_jobs", ["default", "other"]),
                                              ("claim_jobs_any_queue", None)])
def test_the_claim_stays_an_index_scan_over_a_large_analyzed_backlog(
        backlog_dsn: str, name: str, queues: list[str] | None) -> None:
    # With statistics saying most rows are claimable, a paused-queue filter the planner cannot
    # estimate once made it sort the whole table for every claim (151 jobs/s at 1M waiting).
    params: dict[str, Any] = {"limit": 50, "worker_id": "w-plan", "lease_token": str(uuid.uuid4())}
    if queues is not None:
        params["queues"] = queues

    nodes = explain(backlog_dsn, getattr(JOBS, name), params)

    assert not [n for n in nodes if n.get("Relation Name") == "jobs" and n["Node Type"] == "Seq Scan"]
    # Sorting one rare queue's few rows is fine; sorting the backlog is what made claims crawl.
    big_sorts = [n for n in nodes if n["Node Type"] == "Sort" and n["Plan Rows"] > 5000]
    assert not big_sorts, f"the claim sorts the backlog instead of walking its index: {big_sorts}"


@pytest.mark.parametrize("held_task", ["todo", "other"])
def test_the_claim_stays_an_index_scan_while_a_circuit_breaker_holds_a_task(backlog_dsn: str, held_task: str) -> None:
    # The breaker filter is a hashed subplan (held tasks read once per claim): an anti-join on task
    # was estimated from the task column's statistics and sorted the whole backlog.
    params: dict[str, Any] = {"limit": 50, "worker_id": "w-plan", "lease_token": str(uuid.uuid4()),
                              "queues": ["default"]}
    with psycopg.connect(backlog_dsn) as conn:
        conn.execute("INSERT INTO pgqueue.circuit_breakers (task, state, opened_at, failure_threshold, window_seconds,"
                     " cooldown_seconds) VALUES (%s, 'open', now(), 5, 60, 30)", [held_task])
        conn.execute("ANALYZE pgqueue.circuit_breakers")
        for name in ("claim_jobs", "claim_jobs_any_queue"):
            row = conn.execute("EXPLAIN (FORMAT JSON) " + getattr(JOBS, name), params).fetchone()
            assert row is not None
            nodes = list(plan_nodes(row[0][0]["Plan"]))
            assert not [n for n in nodes if n.get("Relation Name") == "jobs" and n["Node Type"] == "Seq Scan"]
            assert not [n for n in nodes if n["Node Type"] == "Sort" and n["Plan Rows"] > 5000]
            assert {n["Index Name"] for n in nodes if "Index Name" in n} & CLAIM_INDEXES
        conn.rollback()


@pytest.mark.parametrize(("name", "queues"), [("claim_jobs_except_limited_tasks", ["default"]),
                                              ("claim_jobs_any_queue_except_limited_tasks", None)])
def test_the_claim_that_leaves_limited_tasks_out_stays_an_index_scan(
        backlog_dsn: str, name: str, queues: list[str] | None) -> None:
    params: dict[str, Any] = {"limit": 50, "worker_id": "w-plan", "lease_token": str(uuid.uuid4()),
                              "limited_tasks": ["send-sms", "sync-record"]}
    if queues is not None:
        params["queues"] = queues

    nodes = explain(backlog_dsn, getattr(JOBS, name), params)

    assert not [n for n in nodes if n.get("Relation Name") == "jobs" and n["Node Type"] == "Seq Scan"]
    big_sorts = [n for n in nodes if n["Node Type"] == "Sort" and n["Plan Rows"] > 5000]
    assert not big_sorts, f"the claim sorts the backlog instead of walking its index: {big_sorts}"


LIMITED_QUEUE_INDEXES = CLAIM_INDEXES | {"jobs_pkey", "jobs_running_idx", "queues_pkey", "rate_starts_scope_at_idx"}


@pytest.mark.parametrize("name", ["claim_limited_queue_jobs", "claim_limited_queue_jobs_all_tasks"])
def test_a_limited_queues_claim_stays_an_index_scan_over_a_large_analyzed_backlog(backlog_dsn: str, name: str) -> None:
    # The queue is limited inside the EXPLAIN's own transaction (rolled back): its 100k jobs wait.
    params = {"queue": "default", "limit": 50, "worker_id": "w-plan", "lease_token": str(uuid.uuid4()),
              "limited_tasks": ["send-sms"]}
    with psycopg.connect(backlog_dsn) as conn:
        conn.execute("INSERT INTO pgqueue.queues (name, concurrency, rate_limit, rate_period_seconds)"
                     " VALUES ('default', 50, 1000, 1)")
        row = conn.execute("EXPLAIN (FORMAT JSON) " + getattr(JOBS, name), params).fetchone()
        conn.rollback()
    assert row is not None
    nodes = list(plan_nodes((row[0] if isinstance(row[0], list) else json.loads(row[0]))[0]["Plan"]))

    seq = [n for n in nodes if n.get("Relation Name") == "jobs" and n["Node Type"] == "Seq Scan"]
    assert not seq, f"sequential scan on jobs: {seq}"
    big_sorts = [n for n in nodes if n["Node Type"] == "Sort" and n["Plan Rows"] > 5000]
    assert not big_sorts, f"the limited claim sorts the backlog instead of walking its index: {big_sorts}"
    used = {n["Index Name"] for n in nodes if "Index Name" in n}
    # Either partial claim index (as for claim_jobs); the running count walks jobs_running_idx.
    assert used & CLAIM_INDEXES, f"indexes used: {sorted(used)}"
    assert used <= LIMITED_QUEUE_INDEXES


def test_the_all_tasks_limited_claim_is_the_limited_claim_without_its_task_filter() -> None:
    # Two statements only because of how each is planned (see jobs.sql): whatever changes in one
    # must change in the other, so they may differ in the task filter's lines and comments only.
    def statement(query: str) -> list[str]:
        return [line for line in query.splitlines() if not line.strip().startswith("--")]

    filtered = statement(JOBS.claim_limited_queue_jobs)
    without_filter = [line for line in filtered if "%(limited_tasks)b" not in line]

    assert len(without_filter) == len(filtered) - 2
    assert statement(JOBS.claim_limited_queue_jobs_all_tasks) == without_filter


@pytest.mark.parametrize("database", ["backlog", "history"])
def test_the_generic_plan_of_a_limited_queues_claim_walks_its_index(
        backlog_dsn: str, history_dsn: str, database: str) -> None:
    # The claim of a limited queue when no task is limited runs under its generic plan (planned per
    # claim it cost more server time than it ran): that plan must walk the queue's claim index
    # whatever the queue's share of the table, never sort the queue's jobs.
    dsn, queue = (backlog_dsn, "default") if database == "backlog" else (history_dsn, "q1")
    params = {"queue": queue, "limit": 20, "worker_id": "w-plan", "lease_token": str(uuid.uuid4())}
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO pgqueue.queues (name, concurrency, rate_limit, rate_period_seconds)"
                     " VALUES (%s, 50, 1000, 1)", [queue])
        nodes = cached_plan(conn, JOBS.claim_limited_queue_jobs_all_tasks, params, generic=True)
        conn.rollback()
    assert not [n for n in nodes if n.get("Relation Name") == "jobs" and n["Node Type"] == "Seq Scan"]
    assert not [n for n in nodes if n["Node Type"] == "Sort"], "the generic plan sorts instead of walking the index"
    used = {n["Index Name"] for n in nodes if "Index Name" in n}
    assert used & CLAIM_INDEXES, f"indexes used: {sorted(used)}"
    assert used <= LIMITED_QUEUE_INDEXES


def test_a_limited_queues_claim_is_planned_once_not_for_every_claim(backlog_dsn: str) -> None:
    async def claim_repeatedly() -> tuple[list[int], tuple[int, int]]:
        async with await psycopg.AsyncConnection.connect(backlog_dsn) as conn:
            await conn.execute("INSERT INTO pgqueue.queues (name, concurrency) VALUES ('default', 10000)")
            await conn.commit()
            await conn.set_autocommit(True)  # as the worker's claim session
            store = AsyncJobStore(conn)
            taken = [len((await store.claim_limited_queue_jobs("default", 8, "w-plan"))[0]) for _ in range(8)]
            cur = await conn.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                                     " WHERE statement LIKE '%%same claim when no task is limited%%'")
            plans = await cur.fetchone()
            assert plans is not None
            await conn.execute("DELETE FROM pgqueue.queues")
            await conn.execute("UPDATE pgqueue.jobs SET state = 'available', attempt = 0, worker_id = NULL,"
                               " lease_token = NULL, started_at = NULL WHERE state = 'running'")
            return taken, plans

    taken, (generic, custom) = asyncio.run(claim_repeatedly())
    assert taken == [8] * 8
    assert custom == 0, f"{generic} generic, {custom} custom plans"
    assert generic >= 2


# --- the any-queue claims are planned once ----------------------------------------------------


def test_the_any_queue_claim_is_planned_once_not_for_every_claim(backlog_dsn: str) -> None:
    # A re-plan costs 0.2-0.3 ms of server CPU on every claim; PostgreSQL keeps the generic plan only
    # when its estimated cost is no worse than the re-planned ones' (a LIMIT parameter on the locking
    # scan made it look far worse).
    with psycopg.connect(backlog_dsn) as conn:
        for _ in range(8):
            params = {"limit": 20, "worker_id": "w-plan", "lease_token": str(uuid.uuid4())}
            assert len(conn.execute(JOBS.claim_jobs_any_queue, params, prepare=True).fetchall()) == 20
        plans = conn.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                             " WHERE statement LIKE '%%claimed AS%%'").fetchone()
        conn.rollback()
    assert plans is not None
    generic, custom = plans
    assert generic >= 2, f"every claim was re-planned: {generic} generic, {custom} custom plans"


@pytest.mark.parametrize("database", ["backlog", "history"])
@pytest.mark.parametrize("held", [False, True])
def test_the_generic_plan_of_the_any_queue_claim_walks_its_index(
        backlog_dsn: str, history_dsn: str, database: str, held: bool) -> None:
    dsn = backlog_dsn if database == "backlog" else history_dsn
    params = {"limit": 20, "worker_id": "w-plan", "lease_token": str(uuid.uuid4())}
    with psycopg.connect(dsn) as conn:
        if held:  # a paused queue and an open breaker: both filters in the plan have something to do
            conn.execute("INSERT INTO pgqueue.queues (name, paused) VALUES ('default', true), ('q1', true)")
            conn.execute("INSERT INTO pgqueue.circuit_breakers (task, state, opened_at, failure_threshold,"
                         " window_seconds, cooldown_seconds) VALUES ('todo', 'open', now(), 5, 60, 30)")
        nodes = cached_plan(conn, JOBS.claim_jobs_any_queue, params, generic=True)
        conn.rollback()
    assert not [n for n in nodes if n.get("Relation Name") == "jobs" and n["Node Type"] == "Seq Scan"]
    assert not [n for n in nodes if n["Node Type"] == "Sort"], "the generic plan sorts instead of walking the index"
    assert {n["Index Name"] for n in nodes if "Index Name" in n} & {"jobs_claim_any_queue_idx"}


@pytest.mark.parametrize("limit", [1, 7, CLAIM_BATCH_MAX])
def test_an_any_queue_claim_locks_only_the_jobs_it_takes(app: App, dsn: str, db: Conn, limit: int) -> None:
    # The locking scan is bounded by CLAIM_BATCH_MAX, the batch by the outer LIMIT: rows past the
    # batch must be neither claimed nor locked, or other workers would skip them for nothing.
    app.enqueue_many(db, [JobSpec("t", {"n": n}) for n in range(CLAIM_BATCH_MAX + 50)])

    with asyncio.Runner() as runner:
        holder = runner.run(psycopg.AsyncConnection.connect(dsn))  # the claim's transaction stays open
        try:
            held = runner.run(AsyncJobStore(holder).claim_jobs(None, limit, "w-holder"))
            assert len(held) == limit
            db.execute("SET lock_timeout = '200ms'")
            locked_elsewhere = db.execute(
                "SELECT count(*) FROM pgqueue.jobs WHERE state = 'available' AND id NOT IN"
                " (SELECT id FROM pgqueue.jobs WHERE state = 'available' FOR UPDATE SKIP LOCKED)").fetchone()
            assert locked_elsewhere == (limit,)
        finally:
            runner.run(holder.rollback())
            runner.run(holder.close())


@pytest.mark.parametrize("limited_tasks", [(), ("other-task",)])
def test_a_limited_claim_waits_for_the_queues_lock_then_counts_what_its_holder_started(
        app: App, dsn: str, db: Conn, limited_tasks: tuple[str, ...]) -> None:
    # The lock and the claim go to the server in one pipeline: the claim must still take its
    # snapshot after the lock is granted, so it sees the jobs the previous holder started (2 of a
    # limit of 3) and takes 1. A snapshot from before the wait would see none running and take 3.
    ids = app.enqueue_many(db, [JobSpec("t", {"n": n}, queue="lim") for n in range(6)])
    db.execute("INSERT INTO pgqueue.queues (name, concurrency) VALUES ('lim', 3)")
    outcome: dict[str, Any] = {}

    async def limited_claim() -> list[Job]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True,
                                                         application_name="limited-claim") as conn:
            store = AsyncJobStore(conn)
            claim = await store.claim_limited_queue_jobs("lim", 5, "w-claim", except_tasks=limited_tasks)
            return claim.jobs

    def run_claim() -> None:
        try:
            outcome["jobs"] = asyncio.run(limited_claim())
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread below
            outcome["error"] = exc

    with psycopg.connect(dsn) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(hashtextextended('pgqueue:queue:' || 'lim', 0))")
        holder.execute("UPDATE pgqueue.jobs SET state = 'running', attempt = 1, worker_id = 'w-holder',"
                       " lease_token = gen_random_uuid(), started_at = now() WHERE id = ANY(%s)", [ids[:2]])
        claimer = threading.Thread(target=run_claim)
        claimer.start()
        wait_until(lambda: db.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = 'limited-claim'"
                                      " AND wait_event_type = 'Lock'").fetchone(),
                   message="the limited claim did not wait for the queue's lock")
        holder.commit()
    claimer.join(30)

    assert "error" not in outcome, outcome.get("error")
    assert [job.id for job in outcome["jobs"]] == ids[2:3]
    running = db.execute("SELECT count(*) FROM pgqueue.jobs WHERE queue = 'lim' AND state = 'running'").fetchone()
    assert running == (3,)


@pytest.mark.parametrize("limited_tasks", [(), ("other-task",)])
def test_a_rate_limited_claim_writes_one_ledger_row_counting_its_starts(
        app: App, dsn: str, db: Conn, limited_tasks: tuple[str, ...]) -> None:
    # One row per claim (its starts share the claim's timestamp), not one per start: the next
    # claim sums a row per claim in the window instead of counting every start.
    app.enqueue_many(db, [JobSpec("t", {"n": n}, queue="sms") for n in range(12)])
    db.execute("INSERT INTO pgqueue.queues (name, rate_limit, rate_period_seconds) VALUES ('sms', 8, 60)")

    async def claim_twice() -> list[int]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            store = AsyncJobStore(conn)
            return [len((await store.claim_limited_queue_jobs("sms", 5, "w-rate", except_tasks=limited_tasks))[0])
                    for _ in range(3)]

    assert asyncio.run(claim_twice()) == [5, 3, 0]  # the window's 8 starts are used up
    ledger = db.execute("SELECT starts FROM pgqueue.rate_starts WHERE scope = 'queue:sms' ORDER BY at").fetchall()
    assert ledger == [(5,), (3,)]
    # What `pgqueue queues list` shows as the window's usage.
    assert {q.name: q.starts_in_window for q in admin.list_queues(db)}["sms"] == 8


@pytest.mark.parametrize("limited_tasks", [(), ("other-task",)])
def test_a_limited_claim_locks_only_the_jobs_it_takes(app: App, dsn: str, db: Conn,
                                                      limited_tasks: tuple[str, ...]) -> None:
    # Its locking scan is bounded by CLAIM_BATCH_MAX and the allowance taken by the outer LIMIT, as
    # in the any-queue claim: rows past the allowance must be neither claimed nor locked.
    app.enqueue_many(db, [JobSpec("t", {"n": n}, queue="lim") for n in range(30)])
    db.execute("INSERT INTO pgqueue.queues (name, concurrency) VALUES ('lim', 4)")

    async def hold() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as holder:
            await holder.execute("SELECT 1")  # a transaction is open: the claim's is a savepoint in it, held open
            jobs = (await AsyncJobStore(holder).claim_limited_queue_jobs("lim", 10, "w-holder",
                                                                         except_tasks=limited_tasks)).jobs
            assert len(jobs) == 4
            db.execute("SET lock_timeout = '200ms'")
            locked_elsewhere = db.execute(
                "SELECT count(*) FROM pgqueue.jobs WHERE state = 'available' AND id NOT IN"
                " (SELECT id FROM pgqueue.jobs WHERE state = 'available' FOR UPDATE SKIP LOCKED)").fetchone()
            assert locked_elsewhere == (4,)
            await holder.rollback()

    asyncio.run(hold())


@pytest.mark.parametrize("limit", [0, CLAIM_BATCH_MAX + 1])
def test_a_claim_outside_the_batch_bounds_is_refused_before_it_runs(dsn: str, limit: int) -> None:
    with pytest.raises(ValueError, match=f"1 to {CLAIM_BATCH_MAX} jobs"):
        asyncio.run(claim(dsn, None, limit))
