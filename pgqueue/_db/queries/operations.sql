-- Queries of the public admin API (pgqueue.admin), the dashboard and the metrics endpoint.
-- Reads are bounded by an index or by an explicit scan budget, never by the size of
-- pgqueue.jobs: the dashboard polls them every few seconds on tables of millions of rows.
-- The state changes themselves (retry, cancel, delete, purge, pause) are the statements of
-- jobs.sql and queues.sql, each writing its audit row.

-- name: list_jobs_page
-- One page of jobs, newest first, below the cursor %(before)s. `candidates` walks at most
-- %(budget)s rows down an index: the primary key, or the state's own partial index when
-- %(indexed_state)s names a state that has one (scheduled, available, running, failed, cancelled).
-- The other filters apply to those candidates only, so a filter that matches few rows costs one
-- budget per page instead of a scan of the table; the caller continues below `lowest_id`.
-- Run unprepared (custom plans): the NULL tests fold away and each filter keeps its index.
WITH candidates AS MATERIALIZED (
    SELECT id, state, queue, task, tags, enqueued_at FROM pgqueue.jobs
    WHERE id < %(before)s
      AND (%(indexed_state)s::text IS NULL OR state = %(indexed_state)s::text)
    ORDER BY id DESC
    LIMIT %(budget)s
), matched AS (
    SELECT id FROM candidates
    WHERE (%(state)s::text IS NULL OR state = %(state)s::text)
      AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
      AND (%(task)s::text IS NULL OR task = %(task)s::text)
      AND (%(tag)s::text IS NULL OR tags @> ARRAY[%(tag)s::text])
      AND (%(since)s::timestamptz IS NULL OR enqueued_at >= %(since)s::timestamptz)
    ORDER BY id DESC
    LIMIT %(limit)s
), scan AS (
    SELECT count(*) AS scanned, min(id) AS lowest_id, max(enqueued_at) AS newest_enqueued_at FROM candidates
)
SELECT j.id, j.task, j.queue, j.state, j.priority, j.args, j.attempt, j.max_attempts, j.run_at, j.enqueued_at,
       j.started_at, j.finished_at, j.progress, j.progress_note, j.result, j.last_error, j.unique_key, j.tags,
       j.worker_id, j.args_encrypted IS NOT NULL AS args_encrypted,
       j.result_encrypted IS NOT NULL AS result_encrypted, j.error_encrypted IS NOT NULL AS error_encrypted,
       scan.scanned, scan.lowest_id, scan.newest_enqueued_at
FROM scan
LEFT JOIN (matched JOIN pgqueue.jobs AS j ON j.id = matched.id) ON true
ORDER BY j.id DESC NULLS LAST;

-- name: get_job_state
SELECT state FROM pgqueue.jobs WHERE id = %(id)s;

-- name: queue_exists
-- A queue exists once it has a settings row or any job. The jobs probe stops at the first row;
-- for a name nobody uses it reads the table once, an operator's action, never a poll.
SELECT EXISTS (SELECT 1 FROM pgqueue.queues WHERE name = %(queue)s)
    OR EXISTS (SELECT 1 FROM pgqueue.jobs WHERE queue = %(queue)s) AS found;

-- name: set_queue_limits
-- Only the limits passed change (%(set_concurrency)s, %(set_rate)s); the other keeps its value.
WITH upserted AS (
    INSERT INTO pgqueue.queues AS q (name, concurrency, rate_limit, rate_period_seconds, updated_at)
    VALUES (%(queue)s, %(concurrency)s, %(rate_limit)s, %(rate_period_seconds)s, now())
    ON CONFLICT (name) DO UPDATE
    SET concurrency = CASE WHEN %(set_concurrency)s THEN EXCLUDED.concurrency ELSE q.concurrency END,
        rate_limit = CASE WHEN %(set_rate)s THEN EXCLUDED.rate_limit ELSE q.rate_limit END,
        rate_period_seconds = CASE WHEN %(set_rate)s THEN EXCLUDED.rate_period_seconds
                                   ELSE q.rate_period_seconds END,
        updated_at = now()
    RETURNING name, paused, concurrency, rate_limit, rate_period_seconds
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, actor, detail)
    SELECT NULL, 'queue_limits_set', %(actor)s,
           jsonb_build_object('queue', name, 'concurrency', concurrency, 'rate_limit', rate_limit,
                              'rate_period_seconds', rate_period_seconds)
    FROM upserted
)
SELECT name, paused, concurrency, rate_limit, rate_period_seconds FROM upserted;

-- name: count_live_workers
SELECT count(*) FILTER (WHERE lease_expires_at > now()) AS alive, count(*) AS registered FROM pgqueue.workers;

-- name: finished_events
-- Outcome rows of the audit trail written by transactions in [%(xid_from)s, horizon), counted per
-- (event, queue, task) and per run-time bucket (width_bucket over %(bounds)s, upper bounds in
-- seconds). Every transaction below the horizon (the oldest one still running) has ended, so
-- no row can later appear in a range already read: the metrics endpoint counts each row once.
-- The queue and task come from pgqueue.jobs (NULL once retention pruned the job); the run time is
-- known while the job still shows the attempt the event closed.
WITH bounds AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon
), outcomes AS (
    SELECT e.event, j.queue, j.task,
           CASE WHEN j.attempt = e.attempt AND j.started_at IS NOT NULL
                THEN GREATEST(EXTRACT(EPOCH FROM e.at - j.started_at), 0)::float8 END AS seconds
    FROM bounds
    JOIN pgqueue.job_events AS e ON e.xid >= %(xid_from)s::xid8 AND e.xid < bounds.horizon
    LEFT JOIN pgqueue.jobs AS j ON j.id = e.job_id
    WHERE e.event IN ('completed', 'failed', 'discarded', 'retry_scheduled', 'rescued', 'cancelled')
)
SELECT (SELECT horizon FROM bounds) AS horizon, event, queue, task,
       CASE WHEN seconds IS NOT NULL THEN width_bucket(seconds, %(bounds)s::float8[]) END AS bucket,
       count(*) AS events, COALESCE(sum(seconds), 0)::float8 AS seconds
FROM outcomes
GROUP BY event, queue, task, bucket
UNION ALL
SELECT horizon, NULL, NULL, NULL, NULL, 0, 0 FROM bounds;

-- name: events_horizon
SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon;

-- name: schema_revision
SELECT version_num FROM pgqueue_alembic_version;

-- name: set_report_settings
-- The reports' window and bucket (current_setting in sql/reports/*.sql), for this transaction only.
SELECT set_config(name, value, true) FROM unnest(%(names)s::text[], %(values)s::text[]) AS s(name, value);
