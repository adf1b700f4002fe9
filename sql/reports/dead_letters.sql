-- name: report_dead_letters
-- The dead-letter set: failed jobs, newest first, with the error that ended each one. For an
-- encrypted job only the error's type is stored in plaintext; its message reads (encrypted).
-- `pgqueue jobs retry ID` (or --failed) makes them run again.
--
-- Reads the partial index of failed and cancelled jobs, never the whole table.
SELECT j.id,
       j.queue,
       j.task,
       j.attempt,
       j.max_attempts,
       j.finished_at,
       j.last_error ->> 'type' AS error_type,
       CASE WHEN j.error_encrypted IS NOT NULL THEN '(encrypted)' ELSE j.last_error ->> 'message' END AS error_message,
       j.tags
FROM pgqueue.jobs AS j
WHERE j.state = 'failed'
ORDER BY j.id DESC
LIMIT 1000;
