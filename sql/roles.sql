-- Least-privilege roles for pgqueue.
--
-- Run it after `pgqueue migrate`, as the owner of the pgqueue schema (or a superuser), and again
-- after every upgrade that adds tables: it is idempotent.
--
--     psql "$PGQUEUE_DSN" -v ON_ERROR_STOP=1 -f sql/roles.sql
--
-- The roles are NOLOGIN groups; give them to your login roles:
--
--     GRANT pgqueue_enqueuer TO web_app;       -- the application: enqueue in its own transactions
--     GRANT pgqueue_worker   TO jobs_worker;   -- `pgqueue worker` and `pgqueue scheduler`
--     GRANT pgqueue_admin    TO ops;           -- the management CLI (retry, cancel, pause, purge, prune...)
--     GRANT pgqueue_reader   TO metabase;      -- reporting SQL and dashboards
--
-- Running migrations needs more: CREATE on the database (for the pgqueue schema) and on the
-- schema holding pgqueue_alembic_version, normally public. Keep that to the deploy role.
-- No role may UPDATE pgqueue.job_events: the audit trail is append-only (retention may DELETE).

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

GRANT USAGE ON SCHEMA pgqueue TO pgqueue_reader, pgqueue_enqueuer, pgqueue_worker, pgqueue_admin;

-- Audit rows take `at` and `xid` from the database (now(), the writing transaction): roles may
-- insert every other column, never those, so no one can back-date a row into a sealed range.
-- (Column grants: first drop the table-wide INSERT an earlier version of this file granted.)
REVOKE INSERT ON pgqueue.job_events FROM pgqueue_enqueuer, pgqueue_worker, pgqueue_admin;

-- pgqueue_reader: every table and view, read-only.
GRANT SELECT ON ALL TABLES IN SCHEMA pgqueue TO pgqueue_reader;

-- pgqueue_enqueuer: insert jobs and their 'enqueued' audit rows. It reads back only job
-- metadata (RETURNING id, the live job holding a unique_key), never other jobs' args or results.
GRANT INSERT ON pgqueue.jobs TO pgqueue_enqueuer;
GRANT SELECT (id, task, queue, state, priority, attempt, max_attempts, run_at, enqueued_at, unique_key, tags)
    ON pgqueue.jobs TO pgqueue_enqueuer;
GRANT INSERT (job_id, event, from_state, to_state, attempt, worker_id, actor, detail)
    ON pgqueue.job_events TO pgqueue_enqueuer;
GRANT SELECT ON pgqueue.queues TO pgqueue_enqueuer;
-- Bulk enqueue draws ids up front with nextval('pgqueue.jobs_id_seq').
GRANT USAGE ON ALL SEQUENCES IN SCHEMA pgqueue TO pgqueue_enqueuer;

-- pgqueue_worker: workers claim, heartbeat, complete and retry jobs; their maintenance duties
-- rescue, stage and prune; the scheduler syncs schedules and inserts due cron jobs.
GRANT SELECT, INSERT, UPDATE, DELETE ON pgqueue.jobs TO pgqueue_worker;
GRANT SELECT, DELETE ON pgqueue.job_events TO pgqueue_worker;
GRANT INSERT (job_id, event, from_state, to_state, attempt, worker_id, actor, detail)
    ON pgqueue.job_events TO pgqueue_worker;
-- The maintenance leader seals the trail and marks pruned seals.
GRANT SELECT, INSERT, UPDATE ON pgqueue.audit_seals TO pgqueue_worker;
GRANT SELECT ON pgqueue.queues TO pgqueue_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON pgqueue.schedules TO pgqueue_worker;
GRANT SELECT, INSERT, DELETE ON pgqueue.schedule_runs TO pgqueue_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON pgqueue.workers TO pgqueue_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON pgqueue.leaders TO pgqueue_worker;
GRANT SELECT ON pgqueue.queue_stats TO pgqueue_worker;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA pgqueue TO pgqueue_worker;

-- pgqueue_admin: the management commands (jobs retry/cancel/delete, queues pause/resume/purge,
-- schedules add/remove/pause/resume, prune, keys rotate) and everything they audit.
GRANT SELECT, INSERT, UPDATE, DELETE ON pgqueue.jobs, pgqueue.queues, pgqueue.schedules,
    pgqueue.schedule_runs, pgqueue.workers, pgqueue.leaders TO pgqueue_admin;
GRANT SELECT, DELETE ON pgqueue.job_events TO pgqueue_admin;
GRANT INSERT (job_id, event, from_state, to_state, attempt, worker_id, actor, detail)
    ON pgqueue.job_events TO pgqueue_admin;
-- `pgqueue audit verify` seals what is pending before it checks; `pgqueue prune` marks pruned seals.
GRANT SELECT, INSERT, UPDATE ON pgqueue.audit_seals TO pgqueue_admin;
GRANT SELECT ON pgqueue.queue_stats TO pgqueue_admin;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA pgqueue TO pgqueue_admin;
