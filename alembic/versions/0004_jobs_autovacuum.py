"""Autovacuum settings for pgqueue.jobs, a table that turns over its whole content continuously.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24

With the server defaults (vacuum once dead rows pass 20 % of the table) a busy queue table
accumulates millions of dead rows between vacuums: every job leaves three dead versions (claim,
outcome, deletion by retention) and none of its updates can be HOT, because state is in every
partial index's predicate. Vacuuming at 2 % keeps the heap and the claim indexes near their live
size. Only storage parameters change: nothing is rewritten or locked for long.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SETTINGS = ("autovacuum_vacuum_scale_factor", "autovacuum_vacuum_threshold",
             "autovacuum_vacuum_insert_scale_factor", "autovacuum_analyze_scale_factor")


def upgrade() -> None:
    op.execute("ALTER TABLE pgqueue.jobs SET (autovacuum_vacuum_scale_factor = 0.02, "
               "autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_insert_scale_factor = 0.02, "
               "autovacuum_analyze_scale_factor = 0.05)")


def downgrade() -> None:
    op.execute(f"ALTER TABLE pgqueue.jobs RESET ({', '.join(_SETTINGS)})")
