"""Tamper-evident audit trail: job_events.xid, pgqueue.audit_seals, append-only triggers.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

Why the design is what it is lives in ``sql/schema.sql`` and ``pgqueue/_audit.py``. In short: each
event row records the id of the transaction that wrote it, and the maintenance leader seals every
range of finished transactions into a hash chain, so the hot path never serialises on a chain head.
"""

from __future__ import annotations

from collections.abc import Sequence
from textwrap import dedent

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Added without a default first, then given one: a volatile default in ADD COLUMN would rewrite
    # a large trail during the deploy. Rows written before this migration keep xid NULL and belong
    # to the first seal.
    op.execute("ALTER TABLE pgqueue.job_events ADD COLUMN xid xid8")
    op.execute("ALTER TABLE pgqueue.job_events ALTER COLUMN xid SET DEFAULT pg_current_xact_id()")
    op.execute("CREATE INDEX job_events_xid_idx ON pgqueue.job_events (xid)")
    op.execute("DROP INDEX pgqueue.job_events_at_idx")
    op.execute("CREATE INDEX job_events_at_idx ON pgqueue.job_events USING brin (at)")

    op.execute(dedent(
        """
        CREATE TABLE pgqueue.audit_seals (
            seal_no     bigint      PRIMARY KEY,
            xid_from    xid8        NOT NULL,
            xid_to      xid8        NOT NULL,
            events      bigint      NOT NULL,
            first_at    timestamptz NOT NULL,
            last_at     timestamptz NOT NULL,
            prev_digest bytea       NOT NULL,
            digest      bytea       NOT NULL,
            sealed_at   timestamptz NOT NULL DEFAULT now(),
            pruned_at   timestamptz,
            CONSTRAINT audit_seals_range_check CHECK (xid_from < xid_to),
            CONSTRAINT audit_seals_events_check CHECK (events > 0)
        )
        """
    ).strip())

    op.execute(dedent(
        """
        CREATE FUNCTION pgqueue.job_events_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'pgqueue.job_events is append-only: % is not allowed', TG_OP
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'retention deletes old rows; `pgqueue audit verify` detects any other change';
        END
        $$
        """
    ).strip())
    op.execute("CREATE TRIGGER job_events_no_update BEFORE UPDATE ON pgqueue.job_events "
               "FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.job_events_append_only()")
    op.execute("CREATE TRIGGER job_events_no_truncate BEFORE TRUNCATE ON pgqueue.job_events "
               "FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.job_events_append_only()")


def downgrade() -> None:
    op.execute("DROP TRIGGER job_events_no_truncate ON pgqueue.job_events")
    op.execute("DROP TRIGGER job_events_no_update ON pgqueue.job_events")
    op.execute("DROP FUNCTION pgqueue.job_events_append_only()")
    op.execute("DROP TABLE pgqueue.audit_seals")
    op.execute("DROP INDEX pgqueue.job_events_at_idx")
    op.execute("CREATE INDEX job_events_at_idx ON pgqueue.job_events (at)")
    op.execute("DROP INDEX pgqueue.job_events_xid_idx")
    op.execute("ALTER TABLE pgqueue.job_events DROP COLUMN xid")
