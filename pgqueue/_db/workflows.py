"""Workflows (``workflows.sql``): read a workflow's jobs, cancel or retry them as a whole."""

from __future__ import annotations

from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg.rows import dict_row, tuple_row

from pgqueue._db.cursors import cursor_on
from pgqueue._db.errors import translate_errors
from pgqueue._db.jobs import JobStore
from pgqueue._db.notifications import CANCEL_CHANNEL, DONE_CHANNEL
from pgqueue._db.queries import load_queries


class WorkflowQueries(NamedTuple):
    get_workflow_jobs: LiteralString
    count_workflow_jobs: LiteralString
    get_job_workflow: LiteralString
    cancel_workflow: LiteralString
    find_workflow_dead_jobs: LiteralString
    find_workflow_stranded_jobs: LiteralString
    find_dead_dependency: LiteralString


WORKFLOWS = load_queries(WorkflowQueries, "workflows.sql")


class WorkflowStore:
    """Workflow statements on a psycopg connection owned by the caller (never committed here)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def jobs(self, workflow_id: str) -> list[dict[str, Any]]:
        """Every job of the workflow, in id order, each with the ids it depends on."""
        return self.head(workflow_id, None, None)

    def head(self, workflow_id: str, limit: int | None, job_id: int | None) -> list[dict[str, Any]]:
        """The first ``limit`` jobs of the workflow (None: all), and ``job_id``'s row wherever it is."""
        with translate_errors(), cursor_on(self.conn, row_factory=dict_row) as cur:
            cur.execute(WORKFLOWS.get_workflow_jobs, {"workflow_id": workflow_id, "limit": limit, "job_id": job_id})
            return cur.fetchall()

    def counts(self, workflow_id: str) -> dict[str, int]:
        with translate_errors(), cursor_on(self.conn, row_factory=tuple_row) as cur:
            rows = cur.execute(WORKFLOWS.count_workflow_jobs, {"workflow_id": workflow_id}).fetchall()
        return {str(row[0]): int(row[1]) for row in rows}

    def workflow_of(self, job_id: int) -> str | None:
        with translate_errors(), cursor_on(self.conn, row_factory=tuple_row) as cur:
            row = cur.execute(WORKFLOWS.get_job_workflow, {"id": job_id}).fetchone()
        return row[0] if row else None

    def dead_dependency(self, job_id: int) -> tuple[int, str | None] | None:
        """A dependency ``job_id`` still waits for that will never complete: (its id, its state or
        None when deleted), or None."""
        with translate_errors(), cursor_on(self.conn, row_factory=tuple_row) as cur:
            row = cur.execute(WORKFLOWS.find_dead_dependency, {"id": job_id}).fetchone()
        return None if row is None else (int(row[0]), row[1])

    def stranded_jobs(self, workflow_id: str) -> list[tuple[int, str, int, str | None]]:
        """The failed and cancelled jobs a retry of the workflow would leave waiting for ever:
        (job id, task, the dependency it waits for, that dependency's state or None when deleted)."""
        with translate_errors(), cursor_on(self.conn, row_factory=tuple_row) as cur:
            rows = cur.execute(WORKFLOWS.find_workflow_stranded_jobs, {"workflow_id": workflow_id}).fetchall()
        return [(int(row[0]), str(row[1]), int(row[2]), row[3]) for row in rows]

    def cancel(self, workflow_id: str, actor: str | None, source: str | None = None) -> list[int]:
        with translate_errors(), cursor_on(self.conn, row_factory=tuple_row) as cur:
            cur.execute(WORKFLOWS.cancel_workflow, {"workflow_id": workflow_id, "actor": actor, "source": source,
                                                    "done_channel": DONE_CHANNEL,
                                                    "cancel_channel": CANCEL_CHANNEL})
            return sorted(row[0] for row in cur.fetchall())

    def retry(self, workflow_id: str, actor: str | None, source: str | None = None) -> list[int]:
        with translate_errors(), cursor_on(self.conn, row_factory=tuple_row) as cur:
            ids = [row[0] for row in cur.execute(WORKFLOWS.find_workflow_dead_jobs,
                                                 {"workflow_id": workflow_id}).fetchall()]
        if not ids:
            return []
        return JobStore(self.conn).retry_jobs(ids, None, only_failed=False, actor=actor, source=source).retried
