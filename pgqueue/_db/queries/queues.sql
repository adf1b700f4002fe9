-- Queries on pgqueue.queues and the queue_stats view. Administrative actions write an audit
-- row (job_id NULL) in the same statement.

-- name: set_queue_paused
WITH upserted AS (
    INSERT INTO pgqueue.queues (name, paused, updated_at) VALUES (%(queue)s, %(paused)s, now())
    ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now()
    RETURNING name, paused
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, actor, detail)
    SELECT NULL, CASE WHEN paused THEN 'queue_paused' ELSE 'queue_resumed' END, %(actor)s,
           jsonb_build_object('queue', name)
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
       count(*) FILTER (WHERE state IN ('scheduled', 'available', 'running')) AS pending,
       COALESCE(sum(GREATEST(attempt - 1, 0)), 0) AS retries,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM finished_at - started_at))
           FILTER (WHERE state = 'completed') * 1000 AS run_ms_p50
FROM pgqueue.jobs
GROUP BY queue
ORDER BY queue;
