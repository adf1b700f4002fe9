"""Type-checked by mypy in CI (never run): typed tasks accept what their handlers accept.

Each ``assert_type`` fails the mypy run if the inferred type drifts.
"""

from __future__ import annotations

from typing import Any, assert_type

import psycopg

import pgqueue
from pgqueue.tasks import BoundTask, Task
from pgqueue.workflows import Chain, Signature

app = pgqueue.App()


@app.task(name="send-email", queue="emails")
def send_email(job: pgqueue.Job, to: str, subject: str, cc: list[str] | None = None) -> dict[str, str]:
    return {"to": to}


@app.task
def bare(job: pgqueue.Job, report_id: int) -> None: ...


@app.task(name="render")
async def render(job: pgqueue.Job, report_id: int) -> int:
    return report_id


@app.task(name="loose")
def loose(job: pgqueue.Job, **payload: Any) -> None: ...


def enqueue_typed(conn: psycopg.Connection[Any]) -> None:
    typed: Task[..., dict[str, str]] = send_email
    assert_type(typed.name, str)
    assert_type(send_email.enqueue(conn, to="a@example.com", subject="hi"), int)
    assert_type(send_email.enqueue(conn, "a@example.com", "hi", ["b@example.com"]), int)
    assert_type(send_email.enqueue(None, to="a@example.com", subject="hi"), int)
    urgent = send_email.options(priority="high", delay=60, unique_key="k", tags=["billing"], queue="emails")
    bound: BoundTask[..., dict[str, str]] = urgent
    assert_type(bound.task.name, str)
    assert_type(urgent.options(max_attempts=3).enqueue(conn, to="a@example.com", subject="hi"), int)
    assert_type(bare.enqueue(conn, report_id=1), int)
    assert_type(loose.enqueue(conn, anything=1, goes="here"), int)
    assert_type(send_email(pgqueue.Job.__new__(pgqueue.Job), "a@example.com", "hi"), dict[str, str])


async def enqueue_async_typed(aconn: psycopg.AsyncConnection[Any]) -> None:
    assert_type(await render.enqueue_async(aconn, report_id=7), int)
    assert_type(await render.options(run_at=None).enqueue_async(aconn, 7), int)
    assert_type(await render.enqueue_async(None, report_id=7), int)  # on a connection of pgqueue's own
    assert_type(await render.options(priority="low").enqueue_async(None, 7), int)


def workflow_signatures_typed(conn: psycopg.Connection[Any]) -> None:
    assert_type(send_email.s(to="a@example.com", subject="hi"), Signature)
    assert_type(send_email.s("a@example.com", "hi", cc=["b@example.com"]), Signature)
    assert_type(loose.s(anything=1), Signature)
    flow = pgqueue.chain(render.s(report_id=1), send_email.s(to="a@example.com", subject="hi"))
    assert_type(flow, Chain)
    assert_type(app.enqueue_workflow(conn, flow).job_ids, list[int])


def priorities_typed(conn: psycopg.Connection[Any], vip: bool) -> None:
    level: pgqueue.Priority = "high" if vip else 7
    assert_type(send_email.options(priority=level).enqueue(conn, to="a@example.com", subject="hi"), int)
    assert_type(send_email.options(priority=-5).options(priority="critical").enqueue(conn, "a", "hi"), int)
    assert_type(app.enqueue(conn, "send-email", {"to": "a"}, priority="low"), int)
    assert_type(app.enqueue(conn, "send-email", {"to": "a"}, priority=3), int)
    assert_type(app.enqueue_many(conn, [pgqueue.JobSpec("send-email", priority="normal")]), list[int])
    assert_type(pgqueue.sig("send-email", {"to": "a"}, priority="urgent"), Signature)  # **options: untyped
    assert_type(pgqueue.Signature("render", priority="low"), Signature)


async def priorities_typed_async(aconn: psycopg.AsyncConnection[Any]) -> None:
    assert_type(await app.enqueue_async(aconn, "render", {"report_id": 1}, priority="high"), int)
