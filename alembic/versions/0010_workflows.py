"""Workflows: job dependencies, the ``waiting`` state, and the triggers that settle dependents.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04

- ``pgqueue.jobs`` gains ``workflow_id`` (the chain or group a job belongs to),
  ``pending_dependencies`` (how many of its dependencies have not completed yet),
  ``has_dependents`` (another job waits on it) and ``on_dependency_failure`` (``cancel`` or
  ``run``; NULL for a job without dependencies), and the state ``waiting``.
- ``pgqueue.job_dependencies`` holds one edge per (dependent, dependency), indexed by the
  dependency; ``resolved`` makes each edge count down its dependent at most once.
- A job with dependents that finishes (completed, failed, cancelled, deleted) or is retried is
  noted by a row trigger, and settled at the end of the same statement by a statement trigger: it
  counts its dependents down (``UPDATE ... SET pending_dependencies = pending_dependencies - n``:
  the row update re-reads the newest version, so two dependencies completing at once on two
  connections cannot both miss the last count), releases those that reach zero (``available`` or
  ``scheduled``, with a NOTIFY), and applies each dependent's failure policy. Dependents are
  locked in id order first, so workers completing jobs of the same groups in any order cannot
  deadlock. Every path that finishes a job (the ack, the rescuer, an operator's cancel or delete,
  a transactional task) goes through the same triggers; a job without dependents pays only the
  row trigger's WHEN test and, per statement, the statement trigger's.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from textwrap import dedent

from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATES_BEFORE = "('scheduled', 'available', 'running', 'completed', 'failed', 'cancelled')"
STATES_AFTER = "('waiting', 'scheduled', 'available', 'running', 'completed', 'failed', 'cancelled')"

JOBS_COLUMNS = """
ALTER TABLE pgqueue.jobs
    ADD COLUMN workflow_id uuid,
    ADD COLUMN pending_dependencies integer NOT NULL DEFAULT 0,
    ADD COLUMN has_dependents boolean NOT NULL DEFAULT false,
    ADD COLUMN on_dependency_failure text,
    ADD CONSTRAINT jobs_dependencies_check CHECK (
        pending_dependencies >= 0 AND (on_dependency_failure IS NULL OR on_dependency_failure IN ('cancel', 'run')))
"""

JOB_DEPENDENCIES = """
CREATE TABLE pgqueue.job_dependencies (
    job_id     bigint  NOT NULL REFERENCES pgqueue.jobs (id) ON DELETE CASCADE,
    depends_on bigint  NOT NULL,
    resolved   boolean NOT NULL DEFAULT false,
    PRIMARY KEY (job_id, depends_on),
    CONSTRAINT job_dependencies_not_self CHECK (job_id <> depends_on)
)
"""

JOBS_NOTE_SETTLED = """
CREATE FUNCTION pgqueue.jobs_note_settled() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Noted for pgqueue.jobs_settle_dependents, which runs once at the end of the statement.
    PERFORM set_config('pgqueue.settle_jobs',
                       concat_ws(',', NULLIF(current_setting('pgqueue.settle_jobs', true), ''),
                                 CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END),
                       true);
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$
"""

JOBS_SETTLE_DEPENDENTS = """
CREATE FUNCTION pgqueue.jobs_settle_dependents() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    noted     bigint[];
    doomed    bigint[];
    revived   bigint[];
    touched   bigint;
BEGIN
    -- Security definer: the database keeps the dependency books for every role that finishes a
    -- job (worker, admin, owner), with no grant on the bookkeeping columns or audit events.
    noted := string_to_array(NULLIF(current_setting('pgqueue.settle_jobs', true), ''), ',')::bigint[];
    IF noted IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('pgqueue.settle_jobs', '', true);

    -- Lock the direct dependents in id order before touching any: two workers completing
    -- members of the same groups in different orders then queue instead of deadlocking.
    PERFORM 1 FROM pgqueue.jobs
    WHERE id IN (SELECT job_id FROM pgqueue.job_dependencies WHERE depends_on = ANY(noted))
    ORDER BY id FOR NO KEY UPDATE;

    -- Completed dependencies, and failed ones of dependents that run anyway: count down, and
    -- release the dependents that reach zero.
    WITH settled AS (
        SELECT e.job_id, e.depends_on, COALESCE(x.state, 'deleted') AS outcome
        FROM pgqueue.job_dependencies AS e
        LEFT JOIN pgqueue.jobs AS x ON x.id = e.depends_on
        WHERE e.depends_on = ANY(noted) AND NOT e.resolved
    ), resolved AS (
        UPDATE pgqueue.job_dependencies AS e SET resolved = true
        FROM settled AS s JOIN pgqueue.jobs AS d ON d.id = s.job_id
        WHERE e.job_id = s.job_id AND e.depends_on = s.depends_on
          AND (s.outcome = 'completed'
               OR (s.outcome IN ('failed', 'cancelled', 'deleted') AND d.on_dependency_failure = 'run'))
        RETURNING e.job_id
    ), counts AS (
        SELECT job_id, count(*)::int AS n FROM resolved GROUP BY job_id
    ), released AS (
        UPDATE pgqueue.jobs AS d
        SET pending_dependencies = d.pending_dependencies - c.n,
            state = CASE WHEN d.state = 'waiting' AND d.pending_dependencies = c.n
                         THEN CASE WHEN d.run_at > now() THEN 'scheduled' ELSE 'available' END
                         ELSE d.state END
        FROM counts AS c
        WHERE d.id = c.job_id
        RETURNING d.id, d.queue, d.state, d.attempt, d.pending_dependencies
    ), audit AS (
        INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt)
        SELECT id, 'dependencies_met', 'waiting', state, attempt FROM released
        WHERE pending_dependencies = 0 AND state IN ('available', 'scheduled')
    ), notified AS (
        SELECT pg_notify('pgqueue_jobs', q.queue)
        FROM (SELECT DISTINCT queue FROM released WHERE pending_dependencies = 0 AND state = 'available') AS q
    )
    SELECT count(*) INTO touched FROM notified;

    -- Failed, cancelled or deleted dependencies: their waiting dependents with the 'cancel'
    -- policy, and theirs in turn (the whole closure at once, not one trigger level per step of a
    -- chain), end cancelled.
    WITH RECURSIVE failed_deps AS (
        SELECT n.id FROM unnest(noted) AS n(id)
        WHERE NOT EXISTS (SELECT FROM pgqueue.jobs AS x
                          WHERE x.id = n.id AND x.state NOT IN ('failed', 'cancelled'))
    ), closure(id) AS (
        SELECT e.job_id FROM pgqueue.job_dependencies AS e JOIN pgqueue.jobs AS d ON d.id = e.job_id
        WHERE e.depends_on IN (SELECT id FROM failed_deps) AND NOT e.resolved
          AND d.state = 'waiting' AND d.on_dependency_failure = 'cancel'
        UNION
        SELECT e.job_id FROM closure AS c
        JOIN pgqueue.job_dependencies AS e ON e.depends_on = c.id
        JOIN pgqueue.jobs AS d ON d.id = e.job_id
        WHERE NOT e.resolved AND d.state = 'waiting' AND d.on_dependency_failure = 'cancel'
    )
    SELECT array_agg(id ORDER BY id) INTO doomed FROM closure;
    IF doomed IS NOT NULL THEN
        PERFORM 1 FROM pgqueue.jobs WHERE id = ANY(doomed) ORDER BY id FOR NO KEY UPDATE;
        WITH cancelled AS (
            UPDATE pgqueue.jobs AS d
            SET state = 'cancelled', finished_at = now(),
                last_error = jsonb_build_object('type', 'DependencyFailed',
                                                'message', 'a job it depends on failed, was cancelled or deleted')
            WHERE d.id = ANY(doomed) AND d.state = 'waiting'
            RETURNING d.id, d.attempt
        ), audit AS (
            INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, detail)
            SELECT id, 'cancelled', 'waiting', 'cancelled', attempt,
                   jsonb_build_object('reason', 'dependency failed', 'dependencies', to_jsonb(noted))
            FROM cancelled
        ), woken AS (
            SELECT pg_notify('pgqueue_done', '') FROM (SELECT 1 FROM cancelled LIMIT 1) AS any_row
        )
        SELECT count(*) INTO touched FROM woken;
    END IF;

    -- Retried dependencies: dependents the policy cancelled wait again (with their own
    -- dependents cancelled the same way), and run once the retried job completes.
    WITH RECURSIVE retried AS (
        SELECT x.id FROM pgqueue.jobs AS x
        WHERE x.id = ANY(noted) AND x.state IN ('waiting', 'scheduled', 'available', 'running')
    ), closure(id) AS (
        SELECT e.job_id FROM pgqueue.job_dependencies AS e JOIN pgqueue.jobs AS d ON d.id = e.job_id
        WHERE e.depends_on IN (SELECT id FROM retried) AND NOT e.resolved
          AND d.state = 'cancelled' AND d.last_error ->> 'type' = 'DependencyFailed'
        UNION
        SELECT e.job_id FROM closure AS c
        JOIN pgqueue.job_dependencies AS e ON e.depends_on = c.id
        JOIN pgqueue.jobs AS d ON d.id = e.job_id
        WHERE NOT e.resolved AND d.state = 'cancelled' AND d.last_error ->> 'type' = 'DependencyFailed'
    )
    SELECT array_agg(id ORDER BY id) INTO revived FROM closure;
    IF revived IS NOT NULL THEN
        PERFORM 1 FROM pgqueue.jobs WHERE id = ANY(revived) ORDER BY id FOR NO KEY UPDATE;
        WITH waiting AS (
            UPDATE pgqueue.jobs AS d
            SET state = 'waiting', finished_at = NULL, last_error = NULL
            WHERE d.id = ANY(revived) AND d.state = 'cancelled' AND d.last_error ->> 'type' = 'DependencyFailed'
            RETURNING d.id, d.attempt
        )
        INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, detail)
        SELECT id, 'dependency_retried', 'cancelled', 'waiting', attempt,
               jsonb_build_object('dependencies', to_jsonb(noted))
        FROM waiting;
    END IF;
    RETURN NULL;
END
$$
"""

# Row triggers: only a job with dependents whose state changes in a way that matters is noted.
# BEFORE, so the note exists when the statement trigger's WHEN is evaluated (at the end of the
# statement, before any AFTER row trigger would have run); the row is locked and re-checked by
# then, so a noted row is one the statement updates.
NOTE_ON_UPDATE = """
CREATE TRIGGER jobs_note_settled BEFORE UPDATE OF state ON pgqueue.jobs
    FOR EACH ROW
    WHEN (NEW.has_dependents AND OLD.state IS DISTINCT FROM NEW.state
          AND (NEW.state IN ('completed', 'failed', 'cancelled') OR OLD.state IN ('failed', 'cancelled')))
    EXECUTE FUNCTION pgqueue.jobs_note_settled()
"""

NOTE_ON_DELETE = """
CREATE TRIGGER jobs_note_deleted BEFORE DELETE ON pgqueue.jobs
    FOR EACH ROW
    WHEN (OLD.has_dependents AND OLD.state NOT IN ('completed', 'failed', 'cancelled'))
    EXECUTE FUNCTION pgqueue.jobs_note_settled()
"""

# Statement triggers: the WHEN is evaluated without calling the function, so a statement that
# noted nothing pays one current_setting().
SETTLE_ON_UPDATE = """
CREATE TRIGGER jobs_settle_dependents AFTER UPDATE OF state ON pgqueue.jobs
    FOR EACH STATEMENT
    WHEN (COALESCE(current_setting('pgqueue.settle_jobs', true), '') <> '')
    EXECUTE FUNCTION pgqueue.jobs_settle_dependents()
"""

SETTLE_ON_DELETE = """
CREATE TRIGGER jobs_settle_deleted AFTER DELETE ON pgqueue.jobs
    FOR EACH STATEMENT
    WHEN (COALESCE(current_setting('pgqueue.settle_jobs', true), '') <> '')
    EXECUTE FUNCTION pgqueue.jobs_settle_dependents()
"""

# The 0006 trigger, with 'waiting' a fresh state too: an enqueuer inserts a job that waits on others.
FRESH_BEFORE = """
CREATE TRIGGER jobs_insert_fresh AFTER INSERT ON pgqueue.jobs
    FOR EACH ROW
    WHEN (NEW.state NOT IN ('scheduled', 'available') OR NEW.attempt <> 0 OR NEW.lease_token IS NOT NULL
          OR NEW.worker_id IS NOT NULL OR NEW.started_at IS NOT NULL OR NEW.finished_at IS NOT NULL
          OR NEW.progress IS NOT NULL OR NEW.progress_note IS NOT NULL OR NEW.result IS NOT NULL
          OR NEW.result_encrypted IS NOT NULL OR NEW.last_error IS NOT NULL OR NEW.error_encrypted IS NOT NULL
          OR NEW.enqueued_at <> now())
    EXECUTE FUNCTION pgqueue.jobs_insert_fresh()
"""

FRESH_AFTER = FRESH_BEFORE.replace("('scheduled', 'available')", "('waiting', 'scheduled', 'available')")

# Lock the named jobs (id order) and mark them as having dependents; returns their states under
# the lock, so a dependency cannot finish between this read and the commit of its new dependents.
# Security definer: an enqueuer has no UPDATE on pgqueue.jobs.
LOCK_DEPENDENCIES = """
CREATE FUNCTION pgqueue.lock_dependencies(ids bigint[])
RETURNS TABLE (id bigint, state text, workflow_id uuid)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH locked AS MATERIALIZED (
        SELECT j.id FROM pgqueue.jobs AS j WHERE j.id = ANY(ids) ORDER BY j.id FOR NO KEY UPDATE
    )
    UPDATE pgqueue.jobs AS j SET has_dependents = true
    FROM locked WHERE j.id = locked.id
    RETURNING j.id, j.state, j.workflow_id
$$
"""


def _enqueue_0009() -> str:
    """The 0009 pgqueue.enqueue() text, which this migration extends (and downgrade restores)."""
    spec = importlib.util.spec_from_file_location("pgqueue_migration_0009",
                                                  Path(__file__).with_name("0009_sql_enqueue.py"))
    assert spec is not None and spec.loader is not None  # noqa: S101 -- the file ships beside this one
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.ENQUEUE)


OLD_SIGNATURE = "text, jsonb, text, integer, timestamp with time zone, text, text[], integer"
SIGNATURE = OLD_SIGNATURE + ", bigint[], text"

# pgqueue.enqueue() gains depends_on and on_dependency_failure, with App.enqueue's rules: the
# dependencies are locked (lock_dependencies), unknown ids and, under 'cancel', failed ones are
# refused, and a job with unresolved dependencies starts 'waiting'.
ENQUEUE_DEPENDENCIES = """
    IF enqueue.depends_on IS NOT NULL AND cardinality(enqueue.depends_on) > 0 THEN
        IF enqueue.unique_key IS NOT NULL THEN
            RAISE EXCEPTION 'pgqueue.enqueue: unique_key cannot be combined with depends_on'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF job_policy NOT IN ('cancel', 'run') THEN
            RAISE EXCEPTION 'pgqueue.enqueue: on_dependency_failure % must be cancel or run', quote_literal(job_policy)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT array_agg(l.id ORDER BY l.id), array_agg(l.state ORDER BY l.id),
               (array_agg(l.workflow_id ORDER BY l.id) FILTER (WHERE l.workflow_id IS NOT NULL))[1]
        INTO dep_ids, dep_states, job_workflow
        FROM pgqueue.lock_dependencies(ARRAY(SELECT DISTINCT unnest(enqueue.depends_on))) AS l;
        SELECT d.id INTO missing FROM unnest(enqueue.depends_on) AS d(id)
        WHERE d.id IS NULL OR NOT (d.id = ANY(COALESCE(dep_ids, '{}'))) LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'pgqueue.enqueue: job % does not exist (never enqueued, or deleted or pruned)',
                quote_nullable(missing)
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        IF job_policy = 'cancel' AND ('failed' = ANY(dep_states) OR 'cancelled' = ANY(dep_states)) THEN
            RAISE EXCEPTION 'pgqueue.enqueue: a dependency failed or was cancelled: a job with on_dependency_failure '
                            'cancel cannot depend on it'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT count(*) FILTER (WHERE s NOT IN ('completed', 'failed', 'cancelled')) INTO pending
        FROM unnest(dep_states) AS s;
        job_state := CASE WHEN pending > 0 THEN 'waiting' ELSE job_state END;
        INSERT INTO pgqueue.jobs (task, queue, state, priority, args, max_attempts, run_at, tags,
                                  pending_dependencies, on_dependency_failure, workflow_id)
        VALUES (enqueue.task, job_queue, job_state, job_priority, job_args, job_attempts, job_run_at, job_tags,
                pending, job_policy, job_workflow)
        RETURNING id INTO new_id;
        INSERT INTO pgqueue.job_dependencies (job_id, depends_on, resolved)
        SELECT new_id, d.id, d.state IN ('completed', 'failed', 'cancelled')
        FROM unnest(dep_ids, dep_states) AS d(id, state);
    ELSIF enqueue.unique_key IS NULL THEN"""


def _enqueue_0010(old: str) -> str:
    new = old.replace("""    max_attempts integer DEFAULT 20
) RETURNS bigint""", """    max_attempts integer DEFAULT 20,
    depends_on bigint[] DEFAULT NULL,
    on_dependency_failure text DEFAULT 'cancel'
) RETURNS bigint""")
    new = new.replace("""    tag          text;
BEGIN""", """    tag          text;
    job_policy   text := COALESCE(enqueue.on_dependency_failure, 'cancel');
    job_workflow uuid;
    dep_ids      bigint[];
    dep_states   text[];
    pending      integer;
    missing      bigint;
BEGIN""")
    new = new.replace("""
    IF enqueue.unique_key IS NULL THEN""", ENQUEUE_DEPENDENCIES.rstrip(), 1)
    assert new.count("depends_on") > 5, "the 0009 function text changed: update this migration"  # noqa: S101
    return new


def upgrade() -> None:
    op.execute(dedent(JOBS_COLUMNS).strip())
    op.execute("ALTER TABLE pgqueue.jobs DROP CONSTRAINT jobs_state_check")
    op.execute(f"ALTER TABLE pgqueue.jobs ADD CONSTRAINT jobs_state_check CHECK (state IN {STATES_AFTER})")
    # `pgqueue workflows show` and the admin API read a workflow's jobs; only workflow jobs pay.
    op.execute("CREATE INDEX jobs_workflow_idx ON pgqueue.jobs (workflow_id) WHERE workflow_id IS NOT NULL")
    # Waiting jobs newest first (`jobs list --state waiting`) and counted per queue (the queue_lag
    # report behind `queues list`, `stats`, /metrics) from an index the size of what waits.
    op.execute("CREATE INDEX jobs_waiting_idx ON pgqueue.jobs (id) INCLUDE (queue) WHERE state = 'waiting'")
    op.execute(dedent(JOB_DEPENDENCIES).strip())
    # Completing a job finds its dependents by this index.
    op.execute("CREATE INDEX job_dependencies_depends_on_idx ON pgqueue.job_dependencies (depends_on)")
    op.execute(dedent(JOBS_NOTE_SETTLED).strip())
    op.execute(dedent(JOBS_SETTLE_DEPENDENTS).strip())
    op.execute(dedent(NOTE_ON_UPDATE).strip())
    op.execute(dedent(NOTE_ON_DELETE).strip())
    op.execute(dedent(SETTLE_ON_UPDATE).strip())
    op.execute(dedent(SETTLE_ON_DELETE).strip())
    op.execute(dedent(LOCK_DEPENDENCIES).strip())
    op.execute("DROP TRIGGER jobs_insert_fresh ON pgqueue.jobs")
    op.execute(dedent(FRESH_AFTER).strip())
    op.execute(f"DROP FUNCTION pgqueue.enqueue({OLD_SIGNATURE})")
    op.execute(dedent(_enqueue_0010(_enqueue_0009())).strip())
    op.execute(f"REVOKE EXECUTE ON FUNCTION pgqueue.enqueue({SIGNATURE}) FROM PUBLIC")
    op.execute(f"COMMENT ON FUNCTION pgqueue.enqueue({SIGNATURE}) IS "
               "'Enqueue a plaintext job in the caller''s transaction; returns its id (see sql/README.md)'")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION pgqueue.enqueue({SIGNATURE})")
    op.execute(dedent(_enqueue_0009()).strip())
    op.execute(f"REVOKE EXECUTE ON FUNCTION pgqueue.enqueue({OLD_SIGNATURE}) FROM PUBLIC")
    op.execute(f"COMMENT ON FUNCTION pgqueue.enqueue({OLD_SIGNATURE}) IS "
               "'Enqueue a plaintext job in the caller''s transaction; returns its id (see sql/README.md)'")
    op.execute("DROP TRIGGER jobs_insert_fresh ON pgqueue.jobs")
    op.execute(dedent(FRESH_BEFORE).strip())
    op.execute("DROP FUNCTION pgqueue.lock_dependencies(bigint[])")
    op.execute("DROP TRIGGER jobs_settle_deleted ON pgqueue.jobs")
    op.execute("DROP TRIGGER jobs_settle_dependents ON pgqueue.jobs")
    op.execute("DROP TRIGGER jobs_note_deleted ON pgqueue.jobs")
    op.execute("DROP TRIGGER jobs_note_settled ON pgqueue.jobs")
    op.execute("DROP FUNCTION pgqueue.jobs_settle_dependents()")
    op.execute("DROP FUNCTION pgqueue.jobs_note_settled()")
    op.execute("DROP TABLE pgqueue.job_dependencies")
    op.execute("DROP INDEX pgqueue.jobs_waiting_idx")
    op.execute("DROP INDEX pgqueue.jobs_workflow_idx")
    # Jobs in the new state cannot stay: they become cancelled, as if their dependency failed.
    op.execute("UPDATE pgqueue.jobs SET state = 'cancelled', finished_at = now() WHERE state = 'waiting'")
    op.execute("ALTER TABLE pgqueue.jobs DROP CONSTRAINT jobs_state_check")
    op.execute(f"ALTER TABLE pgqueue.jobs ADD CONSTRAINT jobs_state_check CHECK (state IN {STATES_BEFORE})")
    op.execute("ALTER TABLE pgqueue.jobs DROP CONSTRAINT jobs_dependencies_check, DROP COLUMN on_dependency_failure, "
               "DROP COLUMN has_dependents, DROP COLUMN pending_dependencies, DROP COLUMN workflow_id")
