"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Explicit DDL, one statement per op.execute; sql/schema.sql must be updated to match
(tests/migrations compares them), and downgrade() must undo upgrade() exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
${imports if imports else ""}
revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else 'op.execute("...")'}


def downgrade() -> None:
    ${downgrades if downgrades else 'op.execute("...")'}
