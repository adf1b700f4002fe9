"""Payload encryption at rest: ciphertext columns on pgqueue.jobs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24

An encrypted job keeps ``args`` and ``result`` NULL and only the error's type in ``last_error``;
the payloads live in these bytea columns as self-describing AES-256-GCM ciphertexts (see
``pgqueue/_crypto.py``). Nullable with no default: adding them rewrites nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from textwrap import dedent

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE pgqueue.jobs ADD COLUMN args_encrypted bytea")
    op.execute("ALTER TABLE pgqueue.jobs ADD COLUMN result_encrypted bytea")
    op.execute("ALTER TABLE pgqueue.jobs ADD COLUMN error_encrypted bytea")


def downgrade() -> None:
    # Dropping the columns would silently destroy the only copy of every encrypted payload (their
    # args are NULL), so the downgrade refuses while any exists; the operator decides what to do
    # with those jobs (run them, or delete them) and downgrades afterwards.
    op.execute(dedent(
        """
        DO $$
        DECLARE
            encrypted bigint;
        BEGIN
            SELECT count(*) INTO encrypted FROM pgqueue.jobs
            WHERE args_encrypted IS NOT NULL OR result_encrypted IS NOT NULL OR error_encrypted IS NOT NULL;
            IF encrypted > 0 THEN
                RAISE EXCEPTION 'cannot downgrade below 0003: % job(s) hold encrypted payloads that would be lost', encrypted
                    USING HINT = 'run or delete them first (SELECT id FROM pgqueue.jobs WHERE args_encrypted IS NOT NULL '
                                 'OR result_encrypted IS NOT NULL OR error_encrypted IS NOT NULL)';
            END IF;
        END
        $$
        """
    ).strip())
    op.execute("ALTER TABLE pgqueue.jobs DROP COLUMN error_encrypted")
    op.execute("ALTER TABLE pgqueue.jobs DROP COLUMN result_encrypted")
    op.execute("ALTER TABLE pgqueue.jobs DROP COLUMN args_encrypted")
