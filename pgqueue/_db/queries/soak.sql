-- The soak's own SQL (pgqueue soak): the referee's table, the chaos loop's probes and the books.
-- The product never runs it. Every figure is computed from what pgqueue wrote (pgqueue.jobs,
-- pgqueue.job_events, pgqueue.schedule_runs) checked against what the soak itself saw
-- (soak_executions, the enqueuer's confirmed count, the pids it killed).

-- name: executions_ddl
CREATE TABLE IF NOT EXISTS soak_executions (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id     bigint      NOT NULL,
    attempt    integer     NOT NULL,
    pid        integer     NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS soak_executions_job_id_idx ON soak_executions (job_id);

-- name: record_execution
-- One row per execution, written by the handler before anything else.
INSERT INTO soak_executions (job_id, attempt, pid) VALUES (%(job_id)s, %(attempt)s, %(pid)s);

-- name: pgqueue_backends
-- pgqueue's connections are all named pgqueue-* (worker, listener, heartbeat, maintenance,
-- scheduler); the soak's own (enqueuer, referee, executions) are not, so chaos never hits them.
SELECT pid, application_name FROM pg_stat_activity
WHERE datname = current_database() AND application_name LIKE 'pgqueue%' AND pid <> pg_backend_pid()
ORDER BY application_name, pid;

-- name: terminate_backend
SELECT pg_terminate_backend(%(pid)s);

-- name: batch_landed
-- A batch whose commit was interrupted either landed whole or not at all: look for its first job.
SELECT count(*) FROM pgqueue.jobs
WHERE task = ANY(%(tasks)s::text[]) AND args ->> 'n' = %(n)s::text;

-- name: progress
SELECT count(*) FILTER (WHERE state IN ('completed', 'failed', 'cancelled')) AS terminal,
       count(*) FILTER (WHERE state NOT IN ('completed', 'failed', 'cancelled')) AS open
FROM pgqueue.jobs;

-- name: states
SELECT state, count(*) FROM pgqueue.jobs GROUP BY state ORDER BY state;

-- name: enqueued_rows
-- Jobs the enqueuer wrote, counted by their sequence number: more rows than numbers is a double
-- insert, fewer numbers than the enqueuer confirmed is a lost enqueue.
SELECT count(*) AS rows, count(DISTINCT args ->> 'n') AS distinct_numbers
FROM pgqueue.jobs WHERE task = ANY(%(tasks)s::text[]);

-- name: cron_jobs
SELECT count(*) FROM pgqueue.jobs WHERE task = %(task)s;

-- name: duplicate_outcomes
-- Outcome events a worker or the rescuer writes for one attempt (jobs.sql: complete_jobs,
-- fail_jobs, rescue_jobs). 'released' is left out: release_jobs un-counts the attempt, so its row
-- carries the previous attempt number and the re-claim runs the same number again.
SELECT count(*) FROM (
    SELECT job_id, attempt FROM pgqueue.job_events
    WHERE job_id IS NOT NULL AND event IN ('completed', 'failed', 'discarded', 'retry_scheduled', 'rescued')
    GROUP BY job_id, attempt HAVING count(*) > 1
) AS d;

-- name: terminal_twice
-- A job may reach a terminal state once in its life (the soak never retries or cancels by hand).
SELECT count(*) FROM (
    SELECT job_id FROM pgqueue.job_events
    WHERE job_id IS NOT NULL AND to_state IN ('completed', 'failed', 'cancelled')
    GROUP BY job_id HAVING count(*) > 1
) AS d;

-- name: duplicate_cron_events
-- Two jobs for one (schedule, fire time), seen from both sides: the scheduler's audit rows
-- (insert_scheduled_jobs writes the fire time into the 'enqueued' event) and schedule_runs, whose
-- every row must point at exactly the job it admitted.
SELECT count(*) FROM (
    SELECT detail ->> 'schedule', detail ->> 'fire_time' FROM pgqueue.job_events
    WHERE event = 'enqueued' AND detail ? 'schedule'
    GROUP BY 1, 2 HAVING count(*) > 1
) AS d;

-- name: cron_jobs_without_run
SELECT count(*) FROM pgqueue.jobs AS j
WHERE j.task = %(task)s
  AND NOT EXISTS (SELECT 1 FROM pgqueue.schedule_runs AS r WHERE r.job_id = j.id);

-- name: runs_without_job
SELECT count(*) FROM pgqueue.schedule_runs AS r
WHERE NOT EXISTS (SELECT 1 FROM pgqueue.jobs AS j WHERE j.id = r.job_id);

-- name: cron_runs
SELECT count(*) FROM pgqueue.schedule_runs WHERE schedule_name = %(schedule)s;

-- name: extra_executions
-- Jobs executed more often than workers wrote an outcome for them: each extra execution is an
-- attempt that never reported (its worker died, or its claim was rescued). The pids say whose.
WITH ex AS (
    SELECT job_id, count(*) AS n, array_agg(pid ORDER BY id) AS pids FROM soak_executions GROUP BY job_id
), outcomes AS (
    SELECT job_id, count(*) AS n FROM pgqueue.job_events
    WHERE job_id IS NOT NULL AND event IN ('completed', 'failed', 'discarded', 'retry_scheduled')
    GROUP BY job_id
)
SELECT ex.job_id, ex.n - COALESCE(outcomes.n, 0) AS extra, ex.pids
FROM ex LEFT JOIN outcomes USING (job_id)
WHERE ex.n > COALESCE(outcomes.n, 0);

-- name: completed_without_execution
SELECT count(*) FROM pgqueue.job_events AS e
WHERE e.event = 'completed'
  AND NOT EXISTS (SELECT 1 FROM soak_executions AS x WHERE x.job_id = e.job_id AND x.attempt = e.attempt);

-- name: rescued_attempts
SELECT count(*) FROM pgqueue.job_events WHERE event = 'rescued';

-- name: audit_gaps
-- The audit trail's completeness (verify proves rows unaltered, not that every change wrote one):
-- every job has its 'enqueued' row, and every finished job the row that moved it into its final state.
SELECT
    count(*) FILTER (WHERE NOT EXISTS (
        SELECT 1 FROM pgqueue.job_events AS e WHERE e.job_id = j.id AND e.event = 'enqueued')) AS no_enqueued,
    count(*) FILTER (WHERE j.state IN ('completed', 'failed', 'cancelled') AND NOT EXISTS (
        SELECT 1 FROM pgqueue.job_events AS e
        WHERE e.job_id = j.id AND e.to_state = j.state AND e.attempt = j.attempt)) AS no_terminal
FROM pgqueue.jobs AS j;
