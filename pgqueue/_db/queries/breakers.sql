-- Circuit breakers (pgqueue.circuit_breakers), shared by every worker. Failures are counted and a
-- half-open breaker closed in the ack statements of jobs.sql (fail_jobs, complete_jobs), in the
-- same transaction as the attempt's outcome; the claim statements skip tasks whose breaker is not
-- closed. Every transition writes a pgqueue.job_events row (job_id NULL, the task in detail).

-- name: upsert_breakers
-- A worker's declared breakers, written at start: a new task's breaker starts closed; a changed
-- setting takes effect at once (state and counted failures are kept). Unchanged rows are not
-- rewritten, so a fleet of workers starting together does not queue on the same rows.
INSERT INTO pgqueue.circuit_breakers AS b (task, failure_threshold, window_seconds, cooldown_seconds)
SELECT * FROM unnest(%(tasks)s::text[], %(failures)s::int[], %(windows)s::float8[], %(cooldowns)s::float8[])
ON CONFLICT (task) DO UPDATE
SET failure_threshold = EXCLUDED.failure_threshold, window_seconds = EXCLUDED.window_seconds,
    cooldown_seconds = EXCLUDED.cooldown_seconds, updated_at = now()
WHERE (b.failure_threshold, b.window_seconds, b.cooldown_seconds)
      IS DISTINCT FROM (EXCLUDED.failure_threshold, EXCLUDED.window_seconds, EXCLUDED.cooldown_seconds);

-- name: remove_breakers
-- The tasks a starting worker registers with no circuit breaker: a breaker removed from the code
-- goes from the database too (else it would keep holding the task's jobs and counting failures).
WITH removed AS (
    DELETE FROM pgqueue.circuit_breakers WHERE task = ANY(%(tasks)s::text[])
    RETURNING task, state
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, worker_id, detail)
    SELECT NULL, 'breaker_removed', state, %(worker_id)s, jsonb_build_object('task', task) FROM removed
)
SELECT task FROM removed;

-- name: list_breakers
-- failures: failed attempts within the window now (recent_failures keeps up to the threshold).
SELECT b.task, b.state, b.opened_at,
       (SELECT count(*) FROM unnest(b.recent_failures) AS t
        WHERE t > now() - make_interval(secs => b.window_seconds))::int AS failures,
       b.failure_threshold, b.window_seconds, b.cooldown_seconds,
       CASE WHEN b.state = 'open'
            THEN b.opened_at + make_interval(secs => b.cooldown_seconds) END AS trial_at,
       b.trial_job_id, b.updated_at
FROM pgqueue.circuit_breakers AS b
ORDER BY b.task;

-- name: reset_breaker
-- An operator closes a breaker by hand (its counted failures forgotten); audited with the actor.
WITH before AS (
    SELECT task, state FROM pgqueue.circuit_breakers WHERE task = %(task)s FOR NO KEY UPDATE
), reset AS (
    UPDATE pgqueue.circuit_breakers AS b
    SET state = 'closed', failures = 0, recent_failures = '{}', opened_at = NULL, trial_job_id = NULL,
        updated_at = now()
    FROM before
    WHERE b.task = before.task
    RETURNING b.task
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, actor, detail)
    SELECT NULL, 'breaker_reset', before.state, 'closed', %(actor)s,
           jsonb_build_object('task', before.task) || jsonb_strip_nulls(jsonb_build_object('source', %(source)s::text))
    FROM before JOIN reset ON reset.task = before.task
)
-- Held jobs are found by the workers' next claim (within the poll interval): no NOTIFY, which
-- would need the queues of the task's jobs, a scan of pgqueue.jobs.
SELECT state AS previous_state FROM before;

-- name: find_due_breakers
-- Whether any of the tasks has a breaker due a half-open trial (see claim_breaker_trial): a read of
-- the small breakers table, run every second by idle workers before the claim itself, whose
-- search for a job of the task may read far down a large backlog.
SELECT b.task FROM pgqueue.circuit_breakers AS b
WHERE b.task = ANY(%(tasks)s::text[])
  AND ((b.state = 'open' AND b.opened_at + make_interval(secs => b.cooldown_seconds) <= now())
       OR (b.state = 'half_open'
           AND NOT EXISTS (SELECT 1 FROM pgqueue.jobs AS t WHERE t.id = b.trial_job_id AND t.state = 'running')));

-- name: lock_breakers_for_trial
-- The first statement of a trial claim, in the same transaction: lock the breakers that could be
-- due one. claim_breaker_trial alone was racy. Its snapshot is taken when it starts; when another
-- worker's trial claim commits between then and its lock of the breaker row, PostgreSQL rechecks
-- the WHERE clause on the row's new version (now half-open, with the new trial) but evaluates the
-- subquery on pgqueue.jobs with the old snapshot, where the new trial is not yet running: the row
-- passed as "half-open, trial gone", and a second trial started beside the first (the e2e breaker
-- test saw two breaker_half_opened events in a row). Locked here first, the breaker cannot change
-- before claim_breaker_trial's snapshot, which then sees the trial of any claim that beat us.
-- Locked in task order, as fail_jobs does; SKIP LOCKED, so a trial claim never waits. The claim is
-- then given only the tasks locked here: a breaker skipped because another claimer held it could
-- commit half-open between the claim's snapshot and its lock, the same race again (CI saw it).
SELECT b.task FROM pgqueue.circuit_breakers AS b
WHERE b.task = ANY(%(tasks)s::text[]) AND b.state <> 'closed'
ORDER BY b.task
FOR NO KEY UPDATE OF b SKIP LOCKED;

-- name: claim_breaker_trial
-- Half-open: one trial job of a task whose breaker is open past its cooldown, or half-open with a
-- trial that is no longer running (its worker died and the job was rescued, or it was cancelled or
-- deleted). The breaker row is locked with SKIP LOCKED, so of many workers exactly one takes the
-- trial; its job is claimed in the same statement as the breaker turns half-open.
WITH due AS MATERIALIZED (
    SELECT b.task, b.state, b.trial_job_id FROM pgqueue.circuit_breakers AS b
    WHERE b.task = ANY(%(tasks)s::text[])
      AND ((b.state = 'open' AND b.opened_at + make_interval(secs => b.cooldown_seconds) <= now())
           OR (b.state = 'half_open'
               AND NOT EXISTS (SELECT 1 FROM pgqueue.jobs AS t WHERE t.id = b.trial_job_id AND t.state = 'running')))
    ORDER BY b.opened_at
    LIMIT 1
    FOR NO KEY UPDATE OF b SKIP LOCKED
), picked AS MATERIALIZED (
    SELECT j.id, due.task, due.state AS from_state, due.trial_job_id AS previous_trial
    FROM pgqueue.jobs AS j JOIN due ON j.task = due.task
    WHERE j.state = 'available'
      AND (%(queues)s::text[] IS NULL OR j.queue = ANY(%(queues)s::text[]))
      AND NOT EXISTS (SELECT 1 FROM pgqueue.queues AS q WHERE q.name = j.queue AND q.paused)
    ORDER BY j.priority, j.run_at, j.id
    LIMIT 1
    FOR NO KEY UPDATE OF j SKIP LOCKED
), claimed AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'running', attempt = j.attempt + 1, worker_id = %(worker_id)s,
        lease_token = %(lease_token)s::uuid, started_at = now(), progress = NULL, progress_note = NULL,
        progress_note_encrypted = NULL
    FROM picked
    WHERE j.id = picked.id
    RETURNING j.id, j.task, j.queue, j.args, j.attempt, j.max_attempts, j.enqueued_at, j.priority, j.tags,
              j.args_encrypted
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, worker_id)
    SELECT id, 'claimed', 'available', 'running', attempt, %(worker_id)s FROM claimed
), trial AS (
    UPDATE pgqueue.circuit_breakers AS b
    SET state = 'half_open', trial_job_id = picked.id, updated_at = now()
    FROM picked
    WHERE b.task = picked.task
), trial_audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, worker_id, detail)
    SELECT NULL, 'breaker_half_opened', from_state, 'half_open', %(worker_id)s,
           jsonb_strip_nulls(jsonb_build_object('task', task, 'job_id', id, 'previous_trial_job_id', previous_trial))
    FROM picked
)
SELECT id, task, queue, args, attempt, max_attempts, enqueued_at, priority, tags, args_encrypted FROM claimed;
