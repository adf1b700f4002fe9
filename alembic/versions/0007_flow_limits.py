"""Flow limits enforced by the database: task limits, a start ledger for rate limits, job groups.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

- ``pgqueue.queues.gated`` (generated): paused or limited. The plain claim leaves a gated queue's
  jobs alone; a limited queue's are claimed under its lock, counting what runs.
- ``pgqueue.jobs.group_key``: the group a job was enqueued in (``group="patient:42"``), NULL for
  none. A task declared with ``group_concurrency=N`` runs at most N jobs of one group at once.
- ``pgqueue.task_limits``: the limits declared in code on ``@app.task`` (concurrency, rate,
  group_concurrency), upserted by every worker at start, so that the claim (SQL) enforces them
  across workers. Only limited tasks have a row.
- ``pgqueue.rate_starts``: one row per job start of a rate-limited queue or task (``scope`` is
  ``queue:<name>`` or ``task:<name>``), written by the claim that starts it and pruned by the next
  claim of that scope once older than the window. Only rate-limited scopes write rows, so an
  unlimited queue pays nothing. ``jobs.started_at`` cannot serve as the ledger: the next attempt
  overwrites it, and retention deletes finished jobs.

No index on ``pgqueue.jobs`` is added: a limited claim counts running jobs through the existing
``jobs_running_idx`` (the running set is bounded by the workers' concurrency).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # One boolean the plain claim's anti-join reads, as it read `paused` before: the same plan (a
    # condition OR-ed from three columns changes the planner's estimate, and with it the plan).
    op.execute("ALTER TABLE pgqueue.queues ADD COLUMN gated boolean GENERATED ALWAYS AS "
               "(paused OR concurrency IS NOT NULL OR rate_limit IS NOT NULL) STORED")
    # A nullable column with no default: a catalog-only change, no table rewrite.
    op.execute("ALTER TABLE pgqueue.jobs ADD COLUMN group_key text")
    op.execute("""
CREATE TABLE pgqueue.task_limits (
    task                text PRIMARY KEY,
    concurrency         integer,
    rate_limit          integer,
    rate_period_seconds integer,
    group_concurrency   integer,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT task_limits_concurrency_check CHECK (concurrency IS NULL OR concurrency >= 1),
    CONSTRAINT task_limits_rate_check CHECK ((rate_limit IS NULL) = (rate_period_seconds IS NULL)
                                             AND (rate_limit IS NULL OR (rate_limit >= 1 AND rate_period_seconds >= 1))),
    CONSTRAINT task_limits_group_check CHECK (group_concurrency IS NULL OR group_concurrency >= 1)
)""")
    op.execute("""
CREATE TABLE pgqueue.rate_starts (
    scope text        NOT NULL,
    at    timestamptz NOT NULL
)""")
    op.execute("CREATE INDEX rate_starts_scope_at_idx ON pgqueue.rate_starts (scope, at)")


def downgrade() -> None:
    op.execute("DROP TABLE pgqueue.rate_starts")
    op.execute("DROP TABLE pgqueue.task_limits")
    op.execute("ALTER TABLE pgqueue.jobs DROP COLUMN group_key")
    op.execute("ALTER TABLE pgqueue.queues DROP COLUMN gated")
