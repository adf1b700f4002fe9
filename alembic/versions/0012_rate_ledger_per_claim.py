"""The rate-limit start ledger keeps one row per claim, with its count of starts.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05

``pgqueue.rate_starts`` held one row per job start, and every claim of a rate-limited queue or task
counted the rows of its sliding window: at 1,000,000/s (a limit that never binds) and ~4,000
starts a second, each claim of ~8 jobs counted ~4,000 index entries and wrote 8 rows. A claim stamps
all its starts with one timestamp (the claim statement's start), so a row per claim with a
``starts`` count keeps the window exact with a row per claim to sum.

Adding a column with a constant default rewrites nothing (existing rows read as 1 start each).
The downgrade expands every row back into ``starts`` rows before dropping the column.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE pgqueue.rate_starts ADD COLUMN starts integer NOT NULL DEFAULT 1 "
               "CONSTRAINT rate_starts_starts_check CHECK (starts >= 1)")


def downgrade() -> None:
    op.execute("INSERT INTO pgqueue.rate_starts (scope, at) "
               "SELECT r.scope, r.at FROM pgqueue.rate_starts AS r, generate_series(2, r.starts)")
    op.execute("ALTER TABLE pgqueue.rate_starts DROP COLUMN starts")
