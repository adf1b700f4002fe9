"""An index on the dead-letter set (failed and cancelled jobs), for the admin API and the dashboard.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25

Operators list failed jobs by queue, retry them in bulk, and watch how many there are; the metrics
endpoint counts them on every scrape. Without an index each of those reads every finished job.
The index is partial: only a job that fails or is cancelled pays for it, a completed one never
does, so enqueue and processing throughput are unchanged (measured with `pgqueue bench`).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE INDEX jobs_dead_idx ON pgqueue.jobs (state, id) INCLUDE (queue) "
               "WHERE state IN ('failed', 'cancelled')")


def downgrade() -> None:
    op.execute("DROP INDEX pgqueue.jobs_dead_idx")
