"""Jobs written by COPY under a given actor, and their audit rows: shared by the batch-enqueue
tests and the role tests (which run the same COPY as a login under row-level security)."""

from __future__ import annotations

import asyncio

import psycopg

from pgqueue import App, JobSpec

HOSTILE_ACTOR = "ops\tteam\\back\nslash"


def copy_with_actor(dsn: str, actor: str, *, use_async: bool) -> tuple[bool, list[int]]:
    """JobStore.copy_jobs of 600 jobs under ``actor``: (whether the session may COPY audit rows, the ids)."""
    from pgqueue._db.jobs import JOBS, AsyncJobStore, JobStore

    app = App(dsn)
    jobs = [app._spec_job(JobSpec("t", {"n": n})) for n in range(600)]

    async def copy_async() -> list[int]:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            ids = await AsyncJobStore(aconn).copy_jobs(jobs, len(jobs), actor=actor)
            await aconn.commit()
            return ids

    with psycopg.connect(dsn) as conn:
        copyable = bool((conn.execute(JOBS.job_events_copyable).fetchone() or [False])[0])
        conn.rollback()
        if use_async:
            ids = asyncio.run(copy_async())
        else:
            ids = JobStore(conn).copy_jobs(jobs, len(jobs), actor=actor)
            conn.commit()
    assert len(ids) == 600
    return copyable, ids


def audit_rows(conn: psycopg.Connection[tuple[object, ...]], ids: list[int]) -> set[tuple[object, ...]]:
    """The distinct (event, from, to, attempt, actor, worker, detail) of the jobs' audit rows, one per job."""
    rows = conn.execute("SELECT job_id, event, from_state, to_state, attempt, actor, worker_id, detail"
                        " FROM pgqueue.job_events WHERE job_id = ANY(%s) ORDER BY job_id", [ids]).fetchall()
    assert [row[0] for row in rows] == sorted(ids)
    return {row[1:] for row in rows}
