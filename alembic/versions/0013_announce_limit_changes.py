"""Changes to queue and task limits are announced on the ``pgqueue_limits`` channel.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05

A worker caches the limited queues and tasks it must claim under a lock. It used to read them
again before any claim once the cache was 2 s old: on a worker idle that long, the claim for a lone
job waited one more round trip. A row trigger on ``pgqueue.queues`` (its limits) and on
``pgqueue.task_limits`` now NOTIFYs every change, so a worker whose LISTEN was in place all along
keeps its cache until one is announced (see pgqueue/_worker/claimer.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from textwrap import dedent

from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(dedent(
        """
        CREATE FUNCTION pgqueue.announce_limits() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            -- pgqueue._db.notifications.LIMITS_CHANNEL; sent only if the transaction commits.
            PERFORM pg_notify('pgqueue_limits', '');
            RETURN NULL;
        END
        $$
        """))
    # Row triggers, not statement ones: a statement trigger fires when no row changed too, and every
    # worker's start runs a task_limits upsert that usually changes nothing. pg_notify sends one
    # notification per transaction however many rows fire it.
    op.execute("CREATE TRIGGER queues_announce_limits "
               "AFTER INSERT OR DELETE OR UPDATE OF concurrency, rate_limit, rate_period_seconds ON pgqueue.queues "
               "FOR EACH ROW EXECUTE FUNCTION pgqueue.announce_limits()")
    op.execute("CREATE TRIGGER task_limits_announce AFTER INSERT OR UPDATE OR DELETE ON pgqueue.task_limits "
               "FOR EACH ROW EXECUTE FUNCTION pgqueue.announce_limits()")


def downgrade() -> None:
    op.execute("DROP TRIGGER task_limits_announce ON pgqueue.task_limits")
    op.execute("DROP TRIGGER queues_announce_limits ON pgqueue.queues")
    op.execute("DROP FUNCTION pgqueue.announce_limits()")
