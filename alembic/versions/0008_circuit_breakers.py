"""Circuit breakers shared by every worker: ``pgqueue.circuit_breakers``.

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-04

One row per task declared with ``@app.task(circuit_breaker=pgqueue.CircuitBreaker(...))``; the
worker writes its configuration at start. The claim skips the jobs of a task whose breaker is not
closed; after the cooldown one trial job is claimed (half-open), whose outcome closes or re-opens
it. ``recent_failures`` holds at most ``failure_threshold`` timestamps of failed attempts, so the
window is a true sliding window on the database clock, counted in the ack's own transaction.
Transitions are audit rows in ``pgqueue.job_events`` with ``job_id`` NULL and the task in
``detail``.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CIRCUIT_BREAKERS = """
CREATE TABLE pgqueue.circuit_breakers (
    task              text PRIMARY KEY,
    state             text             NOT NULL DEFAULT 'closed',
    failures          integer          NOT NULL DEFAULT 0,
    opened_at         timestamptz,
    failure_threshold integer          NOT NULL,
    window_seconds    double precision NOT NULL,
    cooldown_seconds  double precision NOT NULL,
    recent_failures   timestamptz[]    NOT NULL DEFAULT '{}',
    trial_job_id      bigint,
    updated_at        timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT circuit_breakers_state_check CHECK (state IN ('closed', 'open', 'half_open')),
    CONSTRAINT circuit_breakers_config_check
        CHECK (failure_threshold >= 1 AND window_seconds > 0 AND cooldown_seconds >= 0)
)
"""


def upgrade() -> None:
    op.execute(CIRCUIT_BREAKERS)


def downgrade() -> None:
    op.execute("DROP TABLE pgqueue.circuit_breakers")
