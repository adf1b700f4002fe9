"""The App that the workflow e2e tests run under real ``pgqueue worker`` processes
(``--app workflow_app:app``, ``cwd=tests/e2e``).

Each handler records its execution (job id, attempt, pid, start) in ``wf_executions`` on its own
autocommit connection before it works, so a run cut short by SIGKILL stays visible. The callback
also records how many of its dependencies were not completed when it started (must be 0) and the
results it read through ``job.dependency_results()``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

import pgqueue

app = pgqueue.App()

EXECUTIONS_DDL = """
CREATE TABLE IF NOT EXISTS wf_executions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id       bigint      NOT NULL,
    attempt      integer     NOT NULL,
    pid          integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    unfinished   integer,
    results      jsonb
)
"""


def _record(job: pgqueue.Job, unfinished: int | None = None, results: Any = None) -> None:
    with psycopg.connect(app.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO wf_executions (job_id, attempt, pid, unfinished, results) "
                     "VALUES (%s, %s, %s, %s, %s)",
                     [job.id, job.attempt, os.getpid(), unfinished,
                      None if results is None else Jsonb(results)])


@app.task(name="member", max_attempts=5)
def member(job: pgqueue.Job, seconds: float = 0.0, **_: Any) -> dict[str, int]:
    _record(job)
    time.sleep(seconds)
    return {"member": job.id}


@app.task(name="callback", max_attempts=5)
def callback(job: pgqueue.Job, **_: Any) -> int:
    with psycopg.connect(app.dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pgqueue.job_dependencies AS e JOIN pgqueue.jobs AS d ON d.id = e.depends_on "
            "WHERE e.job_id = %s AND d.state <> 'completed'", [job.id]).fetchone()
    results = job.dependency_results()
    _record(job, unfinished=int(row[0]) if row else None, results=sorted(results))
    return len(results)


@app.task(name="refuse", max_attempts=1)
def refuse(job: pgqueue.Job, **_: Any) -> None:
    """Fails for good on its first attempt: a workflow step that ends ``failed``."""
    _record(job)
    raise pgqueue.Discard("refused")
