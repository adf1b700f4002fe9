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
    SELECT pg_notify('pgqueue_jobs', name) FROM upserted WHERE NOT paused
)
SELECT name, paused, (SELECT count(*) FROM notified) AS notified FROM upserted;

-- name: queue_stats
SELECT queue, paused, scheduled, available, running, completed, failed, cancelled,
       EXTRACT(EPOCH FROM oldest_available_age)::float8 AS oldest_available_seconds
FROM pgqueue.queue_stats
ORDER BY queue;

-- name: notification_queue_usage
SELECT pg_notification_queue_usage() AS usage;

-- name: read_only_state
-- Whether this session can write: not on a standby, and not under default_transaction_read_only
-- (ALTER SYSTEM/DATABASE/ROLE, often used to fence a primary during a failover).
SELECT pg_is_in_recovery() AS in_recovery, current_setting('transaction_read_only') = 'on' AS read_only;

-- name: long_transactions
-- Client transactions open for over %(max_age)s seconds in this database, oldest first, except
-- our own session. Only this database's sessions hold back vacuum of its tables (pgqueue.jobs
-- among them). Without pg_read_all_stats, other roles' sessions show no xact_start: not listed.
SELECT pid, usename AS "user", application_name, state,
       extract(epoch FROM clock_timestamp() - xact_start)::float8 AS age_seconds
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
  AND xact_start < clock_timestamp() - make_interval(secs => %(max_age)s)
ORDER BY xact_start
LIMIT 10;

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
