-- Queries on pgqueue.job_events, the append-only audit trail. Rows are written by the statements
-- that change state (jobs.sql, queues.sql), in the same transaction; nothing here writes.

-- name: list_job_events
-- The trail of one job in the order it happened (id, not at: several rows share a transaction's now()).
SELECT id, job_id, at, event, from_state, to_state, attempt, worker_id, actor, detail
FROM pgqueue.job_events
WHERE job_id = %(job_id)s
ORDER BY id;
