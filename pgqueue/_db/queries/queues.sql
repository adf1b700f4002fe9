-- Queries on pgqueue.queues and the queue_stats view. Administrative actions write an audit
-- row (job_id NULL) in the same statement; %(source)s (cli, web, api: where the action came from)
-- goes into its detail when given.

-- name: set_queue_paused
WITH upserted AS (
    INSERT INTO pgqueue.queues (name, paused, updated_at) VALUES (%(queue)s, %(paused)s, now())
    ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now()
    RETURNING name, paused
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, actor, detail)
    SELECT NULL, CASE WHEN paused THEN 'queue_paused' ELSE 'queue_resumed' END, %(actor)s,
           jsonb_build_object('queue', name) || jsonb_strip_nulls(jsonb_build_object('source', %(source)s::text))
    FROM upserted
), notified AS (
    -- Resuming wakes idle workers so the backlog starts at once.
    SELECT pg_notify(%(channel)s, name) FROM upserted WHERE NOT paused
)
SELECT name, paused, (SELECT count(*) FROM notified) AS notified FROM upserted;

-- name: queue_stats
SELECT queue, paused, scheduled, available, running, completed, failed, cancelled,
       EXTRACT(EPOCH FROM oldest_available_age)::float8 AS oldest_available_seconds
FROM pgqueue.queue_stats
ORDER BY queue;

-- name: summarize_queues
-- Per-queue outcome summary for reports and the demo: attempts beyond the first are retries;
-- run time is the final attempt's.
SELECT queue,
       count(*) AS jobs,
       count(*) FILTER (WHERE state = 'completed') AS completed,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state IN ('waiting', 'scheduled', 'available', 'running')) AS pending,
       COALESCE(sum(GREATEST(attempt - 1, 0)), 0) AS retries,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM finished_at - started_at))
           FILTER (WHERE state = 'completed') * 1000 AS run_ms_p50
FROM pgqueue.jobs
GROUP BY queue
ORDER BY queue;

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
           || jsonb_strip_nulls(jsonb_build_object('source', %(source)s::text))
    FROM upserted
)
SELECT name, paused, concurrency, rate_limit, rate_period_seconds FROM upserted;

-- name: rate_window_starts
-- Rate-limited queues: starts in the sliding window now (the claim's own ledger, database clock).
SELECT q.name AS queue,
       (SELECT COALESCE(sum(r.starts), 0) FROM pgqueue.rate_starts AS r
        WHERE r.scope = 'queue:' || q.name AND r.at > now() - make_interval(secs => q.rate_period_seconds)) AS starts
FROM pgqueue.queues AS q
WHERE q.rate_limit IS NOT NULL;

-- name: list_task_limits
-- Limits declared on tasks in code (synced by workers at start), with usage now: running jobs
-- across all workers, and starts in the rate window.
SELECT t.task, t.concurrency, t.rate_limit, t.rate_period_seconds, t.group_concurrency, t.updated_at,
       (SELECT count(*) FROM pgqueue.jobs AS j WHERE j.state = 'running' AND j.task = t.task) AS running,
       CASE WHEN t.rate_limit IS NOT NULL THEN
           (SELECT COALESCE(sum(r.starts), 0) FROM pgqueue.rate_starts AS r
            WHERE r.scope = 'task:' || t.task AND r.at > now() - make_interval(secs => t.rate_period_seconds))
       END AS starts_in_window
FROM pgqueue.task_limits AS t
ORDER BY t.task;
