-- Least-privilege roles for pgqueue.
--
-- Run it after `pgqueue migrate`, as the owner of the pgqueue schema (or a superuser), and again
-- after every upgrade: it is idempotent, and it sets each role's privileges to exactly what this
-- file grants (anything granted to the four roles before, by hand or by an older version of this
-- file, is revoked first; all in one transaction, so no session sees a half-applied set).
--
--     psql "$PGQUEUE_DSN" -v ON_ERROR_STOP=1 -f sql/roles.sql
--
-- The roles are NOLOGIN groups; give them to your login roles:
--
--     GRANT pgqueue_enqueuer TO web_app;       -- the application: enqueue in its own transactions
--     GRANT pgqueue_worker   TO jobs_worker;   -- `pgqueue worker` and `pgqueue scheduler`
--     GRANT pgqueue_admin    TO ops;           -- the management CLI (retry, cancel, pause, purge, prune...)
--     GRANT pgqueue_reader   TO metabase;      -- reporting SQL, dashboards, `pgqueue audit verify`
--
-- Running migrations needs more: CREATE on the database (for the pgqueue schema) and on the
-- schema holding pgqueue_alembic_version, normally public. Keep that to the deploy role.
--
-- What each role can and cannot do, and why it is enforced this way, is in sql/README.md (Roles).
-- In short, three layers:
--   1. grants, down to columns: no role writes `at`/`xid` of an audit row, the enqueuer writes only
--      the columns of a fresh job, the worker never rewrites what a job is (task, args, queue...);
--   2. row-level security on pgqueue.job_events (below): each role may insert only the audit rows
--      its own work writes, so history cannot be forged (e.g. an enqueuer writing 'completed');
--   3. triggers from the migrations, which hold for every role: audit rows are never updated and
--      are deleted only by retention, oldest seal first; seals only grow at the head of the chain;
--      a role that does not own pgqueue.jobs inserts only fresh jobs.
--
-- Enabling row-level security takes a brief ACCESS EXCLUSIVE lock on pgqueue.job_events: on a
-- busy system, run this when no long transaction holds the table.

BEGIN;

-- Roles are cluster-wide: create each one only if missing. The handler covers a concurrent run
-- creating the same role between the check and the CREATE.
DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['pgqueue_reader', 'pgqueue_enqueuer', 'pgqueue_worker', 'pgqueue_admin'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;

-- Start from nothing, so a re-run also takes back what an older version of this file granted
-- (table-wide INSERT for the enqueuer, UPDATE on every column for the worker...).
REVOKE ALL ON ALL TABLES IN SCHEMA pgqueue FROM pgqueue_reader, pgqueue_enqueuer, pgqueue_worker, pgqueue_admin;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA pgqueue FROM pgqueue_reader, pgqueue_enqueuer, pgqueue_worker, pgqueue_admin;

GRANT USAGE ON SCHEMA pgqueue TO pgqueue_reader, pgqueue_enqueuer, pgqueue_worker, pgqueue_admin;

-- pgqueue_reader: every table and view, read-only.
GRANT SELECT ON ALL TABLES IN SCHEMA pgqueue TO pgqueue_reader;

-- Everyone who enqueues (the application, the scheduler's cron jobs, `pgqueue enqueue`) writes
-- only these columns: state, attempt, lease, worker, times, result and error take their defaults
-- (and the jobs_insert_fresh trigger refuses a job that is not fresh from anyone but the owner).
-- Bulk enqueue and the scheduler draw ids up front with nextval('pgqueue.jobs_id_seq').
GRANT INSERT (id, task, queue, state, priority, args, args_encrypted, max_attempts, run_at, unique_key, tags,
               group_key, workflow_id, pending_dependencies, has_dependents, on_dependency_failure)
    ON pgqueue.jobs TO pgqueue_enqueuer, pgqueue_worker, pgqueue_admin;
GRANT USAGE ON SEQUENCE pgqueue.jobs_id_seq TO pgqueue_enqueuer, pgqueue_worker, pgqueue_admin;
-- Workflows (depends_on, chains, groups): the new jobs' dependency edges. Marking and locking the
-- jobs they depend on goes through pgqueue.lock_dependencies() (a security-definer function: the
-- enqueuer has no UPDATE on jobs), and the count-down, release and failure policy when a job
-- finishes are the database's own triggers (security definer too, writing 'dependencies_met',
-- 'dependency_retried' and policy 'cancelled' audit rows as the owner): no role needs a grant
-- or policy for them, and none can write those events itself.
GRANT INSERT ON pgqueue.job_dependencies TO pgqueue_enqueuer, pgqueue_worker, pgqueue_admin;
GRANT SELECT ON pgqueue.job_dependencies TO pgqueue_worker, pgqueue_admin;
REVOKE ALL ON FUNCTION pgqueue.lock_dependencies(bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgqueue.lock_dependencies(bigint[]) TO pgqueue_enqueuer, pgqueue_worker, pgqueue_admin;
-- Audit rows take `at` and `xid` from the database (now(), the writing transaction): no role can
-- back-date a row into a sealed range. Which rows each role may write: the policies below.
GRANT INSERT (job_id, event, from_state, to_state, attempt, worker_id, actor, detail)
    ON pgqueue.job_events TO pgqueue_enqueuer, pgqueue_worker, pgqueue_admin;
-- Enqueue from SQL (triggers, psql): SECURITY INVOKER, so it needs the grants above and writes
-- the same 'enqueued' audit row, with the calling role as actor, which only the enqueuer's and the
-- admin's policies below accept (a worker login that enqueues follow-up jobs is also given
-- pgqueue_enqueuer). Not granted to PUBLIC (the migration revokes that).
REVOKE ALL ON FUNCTION pgqueue.enqueue(text, jsonb, text, integer, timestamptz, text, text[], integer, bigint[], text)
    FROM pgqueue_reader, pgqueue_worker;
GRANT EXECUTE ON FUNCTION pgqueue.enqueue(text, jsonb, text, integer, timestamptz, text, text[], integer, bigint[], text)
    TO pgqueue_enqueuer, pgqueue_admin;

-- pgqueue_enqueuer: insert jobs and their 'enqueued' audit rows. It reads back only job
-- metadata (RETURNING id, the live job holding a unique_key), never other jobs' args or results.
GRANT SELECT (id, task, queue, state, priority, attempt, max_attempts, run_at, enqueued_at, unique_key, tags,
              group_key)
    ON pgqueue.jobs TO pgqueue_enqueuer;
GRANT SELECT ON pgqueue.queues TO pgqueue_enqueuer;
-- `pgqueue enqueue` looks up whether a task is declared encrypt=True (then it encrypts the args),
-- and pgqueue.enqueue() reads it to refuse such a task. Only workers write it.
GRANT SELECT ON pgqueue.encrypted_tasks TO pgqueue_enqueuer;

-- pgqueue_worker: workers claim, heartbeat, complete, retry and release jobs; their maintenance
-- duties stage, rescue, seal and prune; the scheduler syncs code schedules and inserts due cron jobs.
-- It changes a job's state and outcome, never what the job is (task, queue, args, priority...).
GRANT SELECT, DELETE ON pgqueue.jobs TO pgqueue_worker;
GRANT UPDATE (state, attempt, worker_id, lease_token, started_at, finished_at, run_at, progress, progress_note,
              progress_note_encrypted, result, result_encrypted, last_error, error_encrypted)
    ON pgqueue.jobs TO pgqueue_worker;
GRANT SELECT, DELETE ON pgqueue.job_events TO pgqueue_worker;
-- Seals: the chain's trigger accepts only a seal that continues it; pruned_at is the one column
-- that ever changes, set by retention (the trigger keeps it an oldest-first prefix).
GRANT SELECT, INSERT, UPDATE (pruned_at) ON pgqueue.audit_seals TO pgqueue_worker;
GRANT SELECT ON pgqueue.queues TO pgqueue_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON pgqueue.schedules TO pgqueue_worker;
-- Retention locks the spent runs it deletes (SELECT ... FOR UPDATE SKIP LOCKED), which takes the
-- UPDATE privilege on some column: the least meaningful one. Nothing updates schedule_runs.
GRANT SELECT, INSERT, DELETE, UPDATE (inserted_at) ON pgqueue.schedule_runs TO pgqueue_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON pgqueue.workers TO pgqueue_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON pgqueue.leaders TO pgqueue_worker;
GRANT SELECT ON pgqueue.queue_stats TO pgqueue_worker;
-- Circuit breakers: a worker writes its tasks' breaker settings at start (and deletes the breaker
-- of a task its code now declares without one), counts failures and moves breakers between states
-- as it acks and claims.
GRANT SELECT, INSERT, UPDATE, DELETE ON pgqueue.circuit_breakers TO pgqueue_worker;
-- Flow limits: a worker stores its code's task limits at start, and the claims of rate-limited
-- queues and tasks keep the start ledger (insert a start, delete the ones that left the window).
GRANT SELECT, INSERT, UPDATE, DELETE ON pgqueue.task_limits TO pgqueue_worker;
GRANT SELECT, INSERT, DELETE ON pgqueue.rate_starts TO pgqueue_worker;
-- Encrypted tasks: a worker records at start which of its code's tasks are declared encrypt=True
-- (and deletes the row of one declared without it).
GRANT SELECT, INSERT, UPDATE, DELETE ON pgqueue.encrypted_tasks TO pgqueue_worker;

-- pgqueue_admin: the management commands (jobs retry/cancel/delete, queues pause/resume/purge,
-- schedules add/remove/pause/resume, prune, keys rotate, audit verify) and what they audit. It does
-- not run workers: a login that does both gets pgqueue_worker too.
GRANT SELECT, DELETE ON pgqueue.jobs TO pgqueue_admin;
-- Retry, cancel and the re-encryption of `keys rotate`.
GRANT UPDATE (state, run_at, finished_at, lease_token, max_attempts, args_encrypted, result_encrypted, error_encrypted,
              progress_note_encrypted)
    ON pgqueue.jobs TO pgqueue_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON pgqueue.queues, pgqueue.schedules, pgqueue.schedule_runs,
    pgqueue.workers, pgqueue.leaders TO pgqueue_admin;
GRANT SELECT, DELETE ON pgqueue.job_events TO pgqueue_admin;
-- `pgqueue audit verify` seals what is pending before it checks; `pgqueue prune` marks pruned seals.
GRANT SELECT, INSERT, UPDATE (pruned_at) ON pgqueue.audit_seals TO pgqueue_admin;
GRANT SELECT ON pgqueue.queue_stats TO pgqueue_admin;
-- `pgqueue breakers reset`: closes a breaker; its settings are the code's (written by workers).
GRANT SELECT, UPDATE (state, failures, recent_failures, opened_at, trial_job_id, updated_at)
    ON pgqueue.circuit_breakers TO pgqueue_admin;
GRANT SELECT ON pgqueue.task_limits, pgqueue.rate_starts, pgqueue.encrypted_tasks TO pgqueue_admin;

-- Row-level security on the audit trail: which rows each role may insert, read and delete. The
-- table's owner (and superusers) bypass it; any other role with a grant on pgqueue.job_events
-- needs a policy of its own. Deletes are further limited for everyone by the job_events_prune_only
-- trigger (retention only), updates refused by job_events_no_update.
ALTER TABLE pgqueue.job_events ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS job_events_read ON pgqueue.job_events;
CREATE POLICY job_events_read ON pgqueue.job_events FOR SELECT
    TO pgqueue_reader, pgqueue_worker, pgqueue_admin
    USING (true);

DROP POLICY IF EXISTS job_events_prune ON pgqueue.job_events;
CREATE POLICY job_events_prune ON pgqueue.job_events FOR DELETE
    TO pgqueue_worker, pgqueue_admin
    USING (true);

-- The enqueuer writes one row per job it enqueues: 'enqueued', into scheduled or available, at
-- attempt 0, with its own actor (the application's OS user), which may not pose as a pgqueue
-- process (the scheduler, the maintenance leader).
DROP POLICY IF EXISTS job_events_enqueue ON pgqueue.job_events;
CREATE POLICY job_events_enqueue ON pgqueue.job_events FOR INSERT
    TO pgqueue_enqueuer
    WITH CHECK (
        event = 'enqueued' AND job_id IS NOT NULL AND from_state IS NULL
        AND to_state IN ('waiting', 'scheduled', 'available') AND attempt = 0 AND worker_id IS NULL AND detail IS NULL
        AND actor IS DISTINCT FROM 'scheduler' AND actor IS DISTINCT FROM 'maintenance'
    );

-- The worker writes what workers, their maintenance duties and the scheduler do, and nothing an
-- operator or an application does. Worker-driven events carry no actor.
DROP POLICY IF EXISTS job_events_work ON pgqueue.job_events;
CREATE POLICY job_events_work ON pgqueue.job_events FOR INSERT
    TO pgqueue_worker
    WITH CHECK (
        -- claims and outcomes (the worker), staging and rescue (maintenance)
        (job_id IS NOT NULL AND actor IS NULL
         AND event IN ('claimed', 'completed', 'retry_scheduled', 'failed', 'discarded', 'released',
                       'rescued', 'available', 'snoozed'))
        -- circuit breaker transitions driven by acks and trial claims (the task in detail)
        OR (job_id IS NULL AND actor IS NULL AND detail ? 'task'
            AND event IN ('breaker_opened', 'breaker_half_opened', 'breaker_closed', 'breaker_removed'))
        -- a cron job the scheduler inserted, with its schedule and fire time
        OR (event = 'enqueued' AND actor = 'scheduler' AND job_id IS NOT NULL AND from_state IS NULL
            AND to_state IN ('scheduled', 'available') AND attempt = 0 AND worker_id IS NULL
            AND detail ? 'schedule')
        -- the scheduler's sync of code schedules, and the runs its misfire policy dropped
        OR (job_id IS NULL AND actor = 'scheduler' AND worker_id IS NULL
            AND event IN ('schedule_added', 'schedule_updated', 'schedule_enabled', 'schedule_disabled',
                          'schedule_misfired'))
        -- the maintenance leader's retention summary
        OR (job_id IS NULL AND actor = 'maintenance' AND worker_id IS NULL AND event = 'pruned')
    );

-- The admin writes operators' actions (with the operator as actor) and enqueues, never a worker's
-- or the scheduler's events.
DROP POLICY IF EXISTS job_events_administer ON pgqueue.job_events;
CREATE POLICY job_events_administer ON pgqueue.job_events FOR INSERT
    TO pgqueue_admin
    WITH CHECK (
        worker_id IS NULL
        AND actor IS DISTINCT FROM 'scheduler' AND actor IS DISTINCT FROM 'maintenance'
        AND (
            (event = 'enqueued' AND job_id IS NOT NULL AND from_state IS NULL
             AND to_state IN ('waiting', 'scheduled', 'available') AND attempt = 0 AND detail IS NULL)
            OR (job_id IS NOT NULL AND event IN ('retried', 'cancelled', 'deleted', 'purged'))
            OR (job_id IS NULL
                AND event IN ('queue_paused', 'queue_resumed', 'queue_limits_set', 'schedule_added', 'schedule_updated',
                              'schedule_removed', 'schedule_paused', 'schedule_resumed', 'keys_rotated', 'pruned',
                              'breaker_reset'))
        )
    );

COMMIT;
