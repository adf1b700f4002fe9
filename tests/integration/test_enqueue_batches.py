"""enqueue_many above one statement's batch: still in order, still all or nothing."""

from __future__ import annotations

import asyncio
import getpass
import json

import psycopg
import pytest
from psycopg.rows import dict_row

from pgqueue import App, JobSpec
from pgqueue.errors import ArgsNotSerializable
from tests.integration.copy_audit import HOSTILE_ACTOR, audit_rows, copy_with_actor

SPECS = 6_000  # three statements of 2,500, 2,500 and 1,000


def test_thousands_of_jobs_come_back_in_input_order_with_unique_keys_resolved_across_batches(dsn: str) -> None:
    app = App(dsn)
    specs = [JobSpec("t", {"i": i}, unique_key="same" if i in (10, 5_500) else None) for i in range(SPECS)]
    with psycopg.connect(dsn) as conn:
        ids = app.enqueue_many(conn, specs)
        conn.commit()
        rows: dict[int, int] = dict(conn.execute("SELECT id, (args ->> 'i')::int FROM pgqueue.jobs").fetchall())
    assert len(ids) == SPECS
    assert ids[5_500] == ids[10]  # the second job with the key, in a later batch, got the first one's id
    assert len(rows) == SPECS - 1
    assert all(rows[job_id] == i for i, job_id in enumerate(ids) if i != 5_500)


@pytest.mark.parametrize("own_connection", [False, True])
def test_a_bad_spec_in_the_last_batch_enqueues_nothing_and_leaves_the_callers_transaction_usable(
        dsn: str, own_connection: bool) -> None:
    app = App(dsn)
    specs = [JobSpec("t", {"i": i}) for i in range(SPECS)]
    specs[-1] = JobSpec("t", {"bad": float("nan")})
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE mine (n int)")
        conn.execute("INSERT INTO mine VALUES (1)")
        with pytest.raises(ArgsNotSerializable):
            app.enqueue_many(None if own_connection else conn, specs)
        conn.commit()  # the caller's own work survives: only pgqueue's savepoint was undone
        assert conn.execute("SELECT count(*) FROM mine").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pgqueue.job_events").fetchone() == (0,)


COPIED = 600  # one batch of jobs that are available at once with no unique_key: written with COPY


def test_a_copied_batch_stores_every_column_and_its_audit_row_like_the_insert_does(dsn: str) -> None:
    app = App(dsn)
    specs = [JobSpec("t", {"i": i, "text": "tab\there\nline \\ back"}, queue=("a", "b")[i % 2], priority="high",
                     max_attempts=3, tags=["x", "y z"] if i % 3 else None) for i in range(COPIED)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = app.enqueue_many(conn, specs)
        jobs = {row[0]: row[1:] for row in conn.execute(
            "SELECT id, args, queue, state, priority, max_attempts, attempt, tags, run_at = enqueued_at, "
            "enqueued_at <= now() FROM pgqueue.jobs").fetchall()}
        events = conn.execute(
            "SELECT job_id, event, from_state, to_state, attempt, actor, xid IS NOT NULL FROM pgqueue.job_events"
        ).fetchall()
    assert ids == sorted(ids)
    assert [jobs[job_id] for job_id in ids] == [
        (spec.args, spec.queue, "available", 25, 3, 0, list(spec.tags or ()), True, True) for spec in specs]
    assert sorted(events) == [(job_id, "enqueued", None, "available", 0, getpass.getuser(), True) for job_id in ids]


def test_a_rolled_back_copied_batch_leaves_no_job_no_audit_row_and_wakes_no_worker(dsn: str) -> None:
    app = App(dsn)
    with psycopg.connect(dsn, autocommit=True) as listener, psycopg.connect(dsn) as conn:
        listener.execute("LISTEN pgqueue_jobs")
        app.enqueue_many(conn, [JobSpec("t", {"i": i}, queue="a") for i in range(COPIED)])
        conn.rollback()
        app.enqueue_many(conn, [JobSpec("t", {"i": i}, queue="b") for i in range(COPIED)])
        conn.commit()
        assert [n.payload for n in listener.notifies(timeout=0.5, stop_after=2)] == ["b"]
        assert conn.execute("SELECT count(*) FROM pgqueue.jobs WHERE queue = 'a'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pgqueue.job_events").fetchone() == (COPIED,)


def test_a_bad_spec_late_in_a_copied_list_on_an_autocommit_connection_enqueues_nothing(dsn: str) -> None:
    app = App(dsn)
    specs = [JobSpec("t", {"i": i}) for i in range(COPIED)]
    specs[-2] = JobSpec("t", {"bad": "\x00"})
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(ArgsNotSerializable):
            app.enqueue_many(conn, specs)
        assert conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pgqueue.job_events").fetchone() == (0,)
        assert len(app.enqueue_many(conn, specs[:-2])) == COPIED - 2


@pytest.mark.parametrize("count", [1, COPIED])
def test_enqueue_works_on_a_connection_whose_rows_are_dicts(dsn: str, count: int) -> None:
    app = App(dsn)
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        job_id = app.enqueue(conn, "t", {"n": 0})
        unique_id = app.enqueue(conn, "t", {"n": 0}, unique_key="k")
        assert app.enqueue(conn, "t", {"n": 1}, unique_key="k") == unique_id
        ids = app.enqueue_many(conn, [JobSpec("t", {"n": n}) for n in range(count)])
        assert conn.execute("SELECT count(*) AS n FROM pgqueue.jobs").fetchone() == {"n": count + 2}
    assert len({job_id, unique_id, *ids}) == count + 2


def test_enqueue_many_async_copies_a_large_list_and_a_rollback_undoes_it(dsn: str) -> None:
    app = App(dsn)
    specs = [JobSpec("t", {"i": i}, queue="a") for i in range(COPIED)]

    async def run() -> list[int]:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            await app.enqueue_many_async(aconn, specs)
            await aconn.rollback()
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as auto:
                return await app.enqueue_many_async(auto, specs)

    ids = asyncio.run(run())
    with psycopg.connect(dsn) as conn:
        stored: dict[int, int] = dict(conn.execute("SELECT id, (args ->> 'i')::int FROM pgqueue.jobs").fetchall())
        events = conn.execute("SELECT job_id FROM pgqueue.job_events WHERE event = 'enqueued'").fetchall()
    assert [stored[job_id] for job_id in ids] == list(range(COPIED))
    assert sorted(job_id for (job_id,) in events) == sorted(ids)


HOSTILE = ["", "plain", "tab\there", "line\nbreak", "cr\rhere", "back\\slash", "\\N", "\\", 'quote"d', "com,ma",
           "{brace}", "sp ace", "NULL", "ünï©ødé ✓", "\\x00ff"]


def test_copied_rows_keep_every_hostile_value_exactly_as_the_insert_path_stores_it(dsn: str) -> None:
    # The COPY path writes its rows in COPY's text format by hand: whatever a task name, args,
    # tags or group key hold must come back exactly as the INSERT path (parameters) stores it.
    from pgqueue._crypto import generate_key
    from pgqueue.settings import Settings

    app = App(dsn, settings=Settings(dsn=dsn, encryption_keys=(generate_key(),)))

    def pick(i: int) -> str:
        return HOSTILE[i % len(HOSTILE)]

    def specs(offset: int) -> list[JobSpec]:
        return [JobSpec(f"task{HOSTILE[i % len(HOSTILE)]}", {"i": offset + i, "s": HOSTILE[i % len(HOSTILE)],
                                                            "nested": {"v": [HOSTILE[(i + 1) % len(HOSTILE)]]}},
                        tags=[pick(i) or "-", pick(i + 3) or "-"] if i % 2 else None,
                        group=HOSTILE[i % len(HOSTILE)] or None if i % 3 else None,
                        encrypt=i % 5 == 0, priority=i % 7)
                for i in range(COPIED)]

    def stored(conn: psycopg.Connection, ids: list[int]) -> list[tuple[object, ...]]:
        rows = {row[0]: row[1:] for row in conn.execute(
            "SELECT id, task, queue, priority, args - 'i', args_encrypted IS NOT NULL, tags, group_key, state "
            "FROM pgqueue.jobs WHERE id = ANY(%s)", [ids]).fetchall()}
        return [rows[job_id] for job_id in ids]

    with psycopg.connect(dsn, autocommit=True) as conn:
        copied = app.enqueue_many(conn, specs(0))              # >= 500 available jobs: COPY
        inserted = [app.enqueue_many(conn, [spec])[0] for spec in specs(COPIED)]  # one INSERT each
        assert stored(conn, copied) == stored(conn, inserted)
        assert conn.execute("SELECT count(*) FROM pgqueue.job_events WHERE job_id = ANY(%s)",
                            [copied]).fetchone() == (COPIED,)
        # Encrypted args (bytea, written as hex) decrypt to what was enqueued.
        task, ciphertext = conn.execute("SELECT task, args_encrypted FROM pgqueue.jobs WHERE id = %s",
                                        [copied[5]]).fetchone() or (None, None)
        assert json.loads(app.keyring.decrypt(ciphertext, "args", task)) == specs(0)[5].args


def test_a_large_group_is_copied_with_its_workflow_columns_and_hostile_values_intact(dsn: str) -> None:
    import pgqueue

    app = App(dsn)
    members = [pgqueue.sig(f"m{HOSTILE[i % len(HOSTILE)]}", {"s": HOSTILE[i % len(HOSTILE)], "i": i})
               for i in range(COPIED)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        wf = app.enqueue_workflow(conn, pgqueue.group(members, then=pgqueue.sig("collect")))
        rows = conn.execute(
            "SELECT task, args, has_dependents, workflow_id::text, state FROM pgqueue.jobs WHERE id = ANY(%s) "
            "ORDER BY (args->>'i')::int", [wf.job_ids[:COPIED]]).fetchall()
    assert [row[:2] for row in rows] == [(sig.task, sig.args) for sig in members]
    assert {row[2:] for row in rows} == {(True, str(wf.id), "available")}


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_copied_jobs_get_their_audit_rows_by_copy_with_the_actor_kept_exactly(dsn: str, use_async: bool) -> None:
    copyable, ids = copy_with_actor(dsn, HOSTILE_ACTOR, use_async=use_async)

    assert copyable, "a superuser session may COPY into job_events: the COPY path is the one tested"
    with psycopg.connect(dsn) as conn:
        assert audit_rows(conn, ids) == {("enqueued", None, "available", 0, HOSTILE_ACTOR, None, None)}
