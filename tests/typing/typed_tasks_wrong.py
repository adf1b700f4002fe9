# Deliberately wrong calls: tests/typing/test_typing.py runs mypy on this file and expects exactly
# the errors marked "# E: <code>" on each line (and none elsewhere). Not collected by pytest.
from __future__ import annotations

from typing import Any

import psycopg

import pgqueue

app = pgqueue.App()


@app.task(name="send-email")
def send_email(job: pgqueue.Job, to: str, subject: str) -> None: ...


@app.task(name="render")
async def render(job: pgqueue.Job, report_id: int) -> None: ...


def wrong(conn: psycopg.Connection[Any]) -> None:
    send_email.enqueue(conn, a="wrong", zzz=3)  # E: call-arg
    send_email.enqueue(conn, to="a@example.com")  # E: call-arg
    send_email.enqueue(conn, to=1, subject="hi")  # E: arg-type
    send_email.enqueue(conn, to="a@example.com", subject="hi", delay=60)  # E: call-arg
    send_email.options(priority=1.5).enqueue(conn, to="a@example.com", subject="hi")  # E: arg-type
    send_email.options(retries=3)  # E: call-arg
    send_email.options(delay=60).enqueue(conn, to="a@example.com")  # E: call-arg
    send_email.enqueue("not a connection", to="a@example.com", subject="hi")  # E: arg-type


def wrong_signatures() -> None:
    send_email.s(to="a@example.com", subject="hi", zzz=3)  # E: call-arg
    send_email.s(to=1, subject="hi")  # E: arg-type
    send_email.s(to="a@example.com")  # E: call-arg
    render.s(report_id="7")  # E: arg-type


def wrong_priorities(conn: psycopg.Connection[Any], name: str) -> None:
    send_email.options(priority="urgent")  # E: arg-type
    send_email.options(priority=name)  # E: arg-type
    send_email.options(delay=1).options(priority="hihg")  # E: arg-type
    app.enqueue(conn, "send-email", {"to": "a"}, priority="urgent")  # E: arg-type
    pgqueue.JobSpec("send-email", priority="urgent")  # E: arg-type
    app.task(name="misfiled", priority="urgent")  # E: call-overload
    app.schedule("nightly", cron="0 3 * * *", task="render", priority="urgent")  # E: arg-type


async def wrong_async(aconn: psycopg.AsyncConnection[Any]) -> None:
    await render.enqueue_async(aconn, report_id="7")  # E: arg-type
    await render.enqueue_async(aconn)  # E: call-arg
    await app.enqueue_async(aconn, "render", {"report_id": 7}, priority="urgent")  # E: arg-type
