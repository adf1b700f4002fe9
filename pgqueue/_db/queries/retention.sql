-- Retention: delete finished jobs and spent schedule_runs rows by age, in bounded batches, and
-- keep pgqueue.jobs vacuumed when nothing else does. Every batch is its own short transaction, so
-- the pruner never holds many row locks or writes one huge WAL burst.

-- name: retention_cutoffs
-- One clock for the whole run: every batch deletes against the same instants, and each batch's
-- row records them. NULL seconds (retention "never") give a NULL cutoff, which deletes nothing.
SELECT now() - make_interval(secs => %(completed)s::float8) AS completed_before,
       now() - make_interval(secs => %(failed)s::float8) AS failed_before,
       now() - make_interval(secs => %(audit)s::float8) AS audit_before;

-- name: delete_completed_jobs
-- Oldest first through jobs_finished_idx (its predicate is implied by state = 'completed').
-- FOR UPDATE SKIP LOCKED: a job an operator is touching right now is left for the next run, and
-- the lock re-checks the row, so a job retried since the snapshot is not deleted.
WITH doomed AS (
    SELECT id FROM pgqueue.jobs
    WHERE state = 'completed' AND finished_at < %(before)s
      -- A job that a job still to run depends on stays: its dependent reads its result, and
      -- depending on a pruned job is an error (migration 0010).
      AND NOT (has_dependents AND EXISTS (
          SELECT FROM pgqueue.job_dependencies AS e JOIN pgqueue.jobs AS d ON d.id = e.job_id
          WHERE e.depends_on = jobs.id AND d.state IN ('waiting', 'scheduled', 'available', 'running')))
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM pgqueue.jobs AS j
    USING doomed
    WHERE j.id = doomed.id AND j.state = 'completed'
    RETURNING j.state
)
SELECT state, count(*) FROM deleted GROUP BY state;

-- name: delete_failed_jobs
-- Cancelled jobs follow the failed retention: both are kept for inspection and retry.
WITH doomed AS (
    SELECT id FROM pgqueue.jobs
    WHERE state IN ('failed', 'cancelled') AND finished_at < %(before)s
      -- A job that a job still to run depends on stays: its dependent reads its result, and
      -- depending on a pruned job is an error (migration 0010).
      AND NOT (has_dependents AND EXISTS (
          SELECT FROM pgqueue.job_dependencies AS e JOIN pgqueue.jobs AS d ON d.id = e.job_id
          WHERE e.depends_on = jobs.id AND d.state IN ('waiting', 'scheduled', 'available', 'running')))
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM pgqueue.jobs AS j
    USING doomed
    WHERE j.id = doomed.id AND j.state IN ('failed', 'cancelled')
    RETURNING j.state
)
SELECT state, count(*) FROM deleted GROUP BY state;

-- name: count_prunable_jobs
-- What a run would delete now (pgqueue prune --dry-run): the same rule as the deletes above,
-- so a job that a job still to run depends on is not counted either.
SELECT count(*) FILTER (WHERE state = 'completed' AND finished_at < %(completed_before)s) AS completed,
       count(*) FILTER (WHERE state = 'failed' AND finished_at < %(failed_before)s) AS failed,
       count(*) FILTER (WHERE state = 'cancelled' AND finished_at < %(failed_before)s) AS cancelled
FROM pgqueue.jobs
WHERE state IN ('completed', 'failed', 'cancelled')
  AND finished_at < GREATEST(%(completed_before)s, %(failed_before)s)
  AND NOT (has_dependents AND EXISTS (
      SELECT FROM pgqueue.job_dependencies AS e JOIN pgqueue.jobs AS d ON d.id = e.job_id
      WHERE e.depends_on = jobs.id AND d.state IN ('waiting', 'scheduled', 'available', 'running')));

-- name: delete_schedule_runs
-- schedule_runs rows are the exactly-once guard of cron: a scheduler inserts a fire time only if
-- its row is new, and only fire times at or after the schedule's next_run_at are ever planned.
-- So a row may go only when its fire time is older than the audit retention AND before both the
-- schedule's last_run_at and next_run_at: no pass can plan it again. Rows of a removed schedule
-- stay (a schedule re-added under that name must not fire them again), as do rows of a schedule
-- that never recorded a last run.
WITH doomed AS (
    SELECT r.schedule_name, r.fire_time
    FROM pgqueue.schedule_runs AS r
    JOIN pgqueue.schedules AS s ON s.name = r.schedule_name
    WHERE r.fire_time < %(before)s
      AND s.last_run_at IS NOT NULL AND r.fire_time < s.last_run_at
      AND (s.next_run_at IS NULL OR r.fire_time < s.next_run_at)
    ORDER BY r.fire_time
    LIMIT %(limit)s
    FOR UPDATE OF r SKIP LOCKED
), deleted AS (
    DELETE FROM pgqueue.schedule_runs AS r
    USING doomed
    WHERE r.schedule_name = doomed.schedule_name AND r.fire_time = doomed.fire_time
    RETURNING 1
)
SELECT count(*) FROM deleted;

-- name: count_prunable_schedule_runs
SELECT count(*)
FROM pgqueue.schedule_runs AS r
JOIN pgqueue.schedules AS s ON s.name = r.schedule_name
WHERE r.fire_time < %(before)s
  AND s.last_run_at IS NOT NULL AND r.fire_time < s.last_run_at
  AND (s.next_run_at IS NULL OR r.fire_time < s.next_run_at);

-- name: insert_prune_event
-- One row per batch (not one per deleted job: those jobs' own trails already end in
-- completed/failed/cancelled), written in the batch's own transaction, so a pruner killed between
-- batches has audited every row it deleted.
INSERT INTO pgqueue.job_events (job_id, event, actor, detail)
VALUES (NULL, 'pruned', %(actor)s, %(detail)s::jsonb);

-- name: jobs_vacuum_state
-- Whether anything else vacuums pgqueue.jobs (the server's autovacuum and the table's own
-- autovacuum_enabled), whether this role may (owner, database owner or superuser: VACUUM by
-- anyone else only warns and skips), and the statistics' live and dead row counts.
SELECT current_setting('autovacuum')::boolean
           AND COALESCE((SELECT option_value::boolean FROM pg_options_to_table(c.reloptions)
                         WHERE option_name = 'autovacuum_enabled'), true) AS autovacuum,
       pg_has_role(current_user, c.relowner, 'USAGE')
           OR pg_has_role(current_user, (SELECT datdba FROM pg_database WHERE datname = current_database()), 'USAGE')
           OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS may_vacuum,
       COALESCE(s.n_live_tup, 0) AS live,
       COALESCE(s.n_dead_tup, 0) AS dead
FROM pg_class AS c
LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
WHERE c.oid = 'pgqueue.jobs'::regclass;

-- name: vacuum_jobs
-- Needs an autocommit session: VACUUM cannot run inside a transaction block.
VACUUM pgqueue.jobs;
