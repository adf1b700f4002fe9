"""The audit trail and the job table hold against pgqueue's own roles.

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-25

Triggers, so the rules hold for every role that can write, the table owner included:

- ``pgqueue.job_events`` rows may be deleted only inside sealed ranges, oldest seal first, and
  never past the seal's recorded newest row: retention can prune the oldest seals, nobody can
  cut a hole in the middle of the trail or delete rows that are not sealed yet.
- ``pgqueue.audit_seals`` only grows at its head, continuing the chain, over transactions that
  have all finished; afterwards only ``pruned_at`` may be set, once, to now(), for a seal whose
  predecessors are all pruned and whose rows are gone. Seals are never deleted.
- A role that does not own ``pgqueue.jobs`` can insert only fresh jobs: ``scheduled`` or
  ``available``, never attempted, with no lease, worker, result or error. An AFTER trigger with a
  WHEN clause: the function runs only for a row that is not fresh, so enqueueing pays nothing and
  COPY keeps its multi-row inserts (a BEFORE row trigger would turn them off).

The row-level security policies that limit which audit rows each shipped role may insert live in
``sql/roles.sql``: they name the roles, which a migration cannot assume exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from textwrap import dedent

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOBS_INSERT_FRESH = """
CREATE FUNCTION pgqueue.jobs_insert_fresh() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- The owner (and superusers) may load history, e.g. when importing jobs from another system.
    IF pg_has_role(current_user, (SELECT relowner FROM pg_catalog.pg_class WHERE oid = TG_RELID), 'USAGE') THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'pgqueue.jobs: job % must be inserted fresh (state scheduled or available, attempt 0, '
                    'no lease, worker, start, finish, progress, result or error), not as %', NEW.id, NEW.state
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'enqueue through pgqueue; only the owner of pgqueue.jobs may insert jobs in other states';
END
$$
"""

JOBS_INSERT_FRESH_TRIGGER = """
CREATE TRIGGER jobs_insert_fresh AFTER INSERT ON pgqueue.jobs
    FOR EACH ROW
    WHEN (NEW.state NOT IN ('scheduled', 'available') OR NEW.attempt <> 0 OR NEW.lease_token IS NOT NULL
          OR NEW.worker_id IS NOT NULL OR NEW.started_at IS NOT NULL OR NEW.finished_at IS NOT NULL
          OR NEW.progress IS NOT NULL OR NEW.progress_note IS NOT NULL OR NEW.result IS NOT NULL
          OR NEW.result_encrypted IS NOT NULL OR NEW.last_error IS NOT NULL OR NEW.error_encrypted IS NOT NULL
          OR NEW.enqueued_at <> now())
    EXECUTE FUNCTION pgqueue.jobs_insert_fresh()
"""

JOB_EVENTS_PRUNE_ONLY = """
CREATE FUNCTION pgqueue.job_events_prune_only() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    open_no   bigint;       -- the oldest seal not pruned yet: the only one whose rows may go
    open_from xid8;
    open_to   xid8;
    open_last timestamptz;
    sealed_to xid8;         -- rows at or past this xid are not prunable
    bad       record;
BEGIN
    SELECT seal_no, xid_from, xid_to, last_at INTO open_no, open_from, open_to, open_last
    FROM pgqueue.audit_seals WHERE pruned_at IS NULL ORDER BY seal_no LIMIT 1;
    IF open_no IS NOT NULL THEN
        sealed_to := open_to;
    ELSE
        SELECT xid_to INTO sealed_to FROM pgqueue.audit_seals ORDER BY seal_no DESC LIMIT 1;
    END IF;
    -- Rows written before migration 0002 have no xid: they belong to the range starting at 0.
    SELECT o.id, o.xid, o.at INTO bad
    FROM deleted AS o
    WHERE sealed_to IS NULL
       OR COALESCE(o.xid, '0'::xid8) >= sealed_to
       OR (COALESCE(o.xid, '0'::xid8) >= open_from AND o.at > open_last)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgqueue.job_events: row % may not be deleted: audit rows go only by retention, '
                        'a whole seal at a time, oldest first (the oldest seal not pruned is %)',
                        bad.id, COALESCE(open_no::text, 'none')
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'rows not sealed yet, and rows of a seal younger than an unpruned one, are kept';
    END IF;
    RETURN NULL;
END
$$
"""

JOB_EVENTS_PRUNE_ONLY_TRIGGER = """
CREATE TRIGGER job_events_prune_only AFTER DELETE ON pgqueue.job_events
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.job_events_prune_only()
"""

AUDIT_SEALS_CHAIN = """
CREATE FUNCTION pgqueue.audit_seals_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    head_no     bigint;
    head_to     xid8;
    head_digest bytea;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT seal_no, xid_to, digest INTO head_no, head_to, head_digest
        FROM pgqueue.audit_seals ORDER BY seal_no DESC LIMIT 1;
        -- A concurrent sealer wrote this number first: the primary key (ON CONFLICT) decides.
        IF NEW.seal_no <= COALESCE(head_no, 0) THEN
            RETURN NEW;
        END IF;
        IF NEW.seal_no <> COALESCE(head_no, 0) + 1
           OR NEW.xid_from <> COALESCE(head_to, '0'::xid8)
           OR NEW.prev_digest <> COALESCE(head_digest, sha256(convert_to('pgqueue audit chain v1', 'UTF8'))) THEN
            RAISE EXCEPTION 'pgqueue.audit_seals: seal % does not continue the chain at seal %',
                            NEW.seal_no, COALESCE(head_no, 0)
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        -- Every transaction below the horizon has finished: no row can appear in the range later.
        IF NEW.xid_to > pg_snapshot_xmin(pg_current_snapshot()) THEN
            RAISE EXCEPTION 'pgqueue.audit_seals: seal % covers transactions that are still running', NEW.seal_no
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        NEW.sealed_at := now();
        NEW.pruned_at := NULL;
        RETURN NEW;
    END IF;
    IF (NEW.seal_no, NEW.xid_from, NEW.xid_to, NEW.events, NEW.first_at, NEW.last_at, NEW.prev_digest,
        NEW.digest, NEW.sealed_at)
       IS DISTINCT FROM (OLD.seal_no, OLD.xid_from, OLD.xid_to, OLD.events, OLD.first_at, OLD.last_at,
                         OLD.prev_digest, OLD.digest, OLD.sealed_at)
       OR OLD.pruned_at IS NOT NULL OR NEW.pruned_at IS NULL THEN
        RAISE EXCEPTION 'pgqueue.audit_seals: seal % may only be marked pruned, once', OLD.seal_no
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF EXISTS (SELECT FROM pgqueue.audit_seals WHERE seal_no < OLD.seal_no AND pruned_at IS NULL) THEN
        RAISE EXCEPTION 'pgqueue.audit_seals: seal % may not be pruned before the seals older than it',
                        OLD.seal_no
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF EXISTS (SELECT FROM pgqueue.job_events
               WHERE (xid >= OLD.xid_from AND xid < OLD.xid_to) OR (OLD.xid_from = '0'::xid8 AND xid IS NULL)) THEN
        RAISE EXCEPTION 'pgqueue.audit_seals: seal % still has rows: delete them first', OLD.seal_no
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- The database's clock, not the caller's: `pgqueue audit verify` judges each seal's age by it.
    NEW.pruned_at := now();
    RETURN NEW;
END
$$
"""

AUDIT_SEALS_KEPT = """
CREATE FUNCTION pgqueue.audit_seals_kept() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'pgqueue.audit_seals: seals are never removed: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'retention keeps a pruned seal''s row so the chain stays checkable';
END
$$
"""


def upgrade() -> None:
    op.execute(dedent(JOBS_INSERT_FRESH).strip())
    op.execute(dedent(JOBS_INSERT_FRESH_TRIGGER).strip())
    op.execute(dedent(JOB_EVENTS_PRUNE_ONLY).strip())
    op.execute(dedent(JOB_EVENTS_PRUNE_ONLY_TRIGGER).strip())
    op.execute(dedent(AUDIT_SEALS_CHAIN).strip())
    op.execute("CREATE TRIGGER audit_seals_chain BEFORE INSERT OR UPDATE ON pgqueue.audit_seals "
               "FOR EACH ROW EXECUTE FUNCTION pgqueue.audit_seals_chain()")
    op.execute(dedent(AUDIT_SEALS_KEPT).strip())
    op.execute("CREATE TRIGGER audit_seals_no_delete BEFORE DELETE ON pgqueue.audit_seals "
               "FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.audit_seals_kept()")
    op.execute("CREATE TRIGGER audit_seals_no_truncate BEFORE TRUNCATE ON pgqueue.audit_seals "
               "FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.audit_seals_kept()")
    # Retention and the guards above look up the oldest unpruned seal; without this index that
    # walks every pruned seal (one every few seconds, for as long as the trail is kept).
    op.execute("CREATE INDEX audit_seals_unpruned_idx ON pgqueue.audit_seals (seal_no) WHERE pruned_at IS NULL")


def downgrade() -> None:
    op.execute("DROP INDEX pgqueue.audit_seals_unpruned_idx")
    op.execute("DROP TRIGGER audit_seals_no_truncate ON pgqueue.audit_seals")
    op.execute("DROP TRIGGER audit_seals_no_delete ON pgqueue.audit_seals")
    op.execute("DROP FUNCTION pgqueue.audit_seals_kept()")
    op.execute("DROP TRIGGER audit_seals_chain ON pgqueue.audit_seals")
    op.execute("DROP FUNCTION pgqueue.audit_seals_chain()")
    op.execute("DROP TRIGGER job_events_prune_only ON pgqueue.job_events")
    op.execute("DROP FUNCTION pgqueue.job_events_prune_only()")
    op.execute("DROP TRIGGER jobs_insert_fresh ON pgqueue.jobs")
    op.execute("DROP FUNCTION pgqueue.jobs_insert_fresh()")
