-- Queries on pgqueue.jobs. Every state change writes its pgqueue.job_events row in the same
-- statement (a data-modifying CTE), so the audit trail commits or rolls back with the change.
-- NOTIFY: pg_notify de-duplicates identical (channel, payload) pairs within a transaction,
-- so however many rows a statement touches, each queue is woken once per transaction.

-- name: insert_job
-- A job without a unique_key. No ON CONFLICT clause: any arbiter index makes every insert a
-- speculative one (a speculative-token lock and one more WAL record per row), even when the key is
-- NULL and the partial unique index is never touched. The NOTIFY is evaluated on the one returned
-- row instead of a DISTINCT over the CTE.
WITH input AS (
    SELECT
        %(task)s::text AS task,
        %(queue)s::text AS queue,
        %(priority)s::int AS priority,
        %(args)s::jsonb AS args,
        %(args_encrypted)b::bytea AS args_encrypted,
        %(max_attempts)s::int AS max_attempts,
        COALESCE(%(run_at)s::timestamptz, now() + make_interval(secs => %(delay)s::float8)) AS run_at,
        COALESCE(%(tags)b::text[], '{}') AS tags
), inserted AS (
    INSERT INTO pgqueue.jobs (task, queue, state, priority, args, args_encrypted, max_attempts, run_at, tags)
    SELECT task, queue, CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END,
           priority, args, args_encrypted, max_attempts, run_at, tags
    FROM input
    RETURNING id, queue, state, attempt
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, to_state, attempt, actor)
    SELECT id, 'enqueued', state, attempt, %(actor)s FROM inserted
)
SELECT id, CASE WHEN state = 'available' THEN pg_notify('pgqueue_jobs', queue) END FROM inserted;

-- name: insert_unique_job
-- A job with a unique_key: no row comes back when a live job holds the key.
WITH input AS (
    SELECT
        %(task)s::text AS task,
        %(queue)s::text AS queue,
        %(priority)s::int AS priority,
        %(args)s::jsonb AS args,
        %(args_encrypted)b::bytea AS args_encrypted,
        %(max_attempts)s::int AS max_attempts,
        COALESCE(%(run_at)s::timestamptz, now() + make_interval(secs => %(delay)s::float8)) AS run_at,
        %(unique_key)s::text AS unique_key,
        COALESCE(%(tags)b::text[], '{}') AS tags
), inserted AS (
    INSERT INTO pgqueue.jobs (task, queue, state, priority, args, args_encrypted, max_attempts, run_at, unique_key,
                              tags)
    SELECT task, queue, CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END,
           priority, args, args_encrypted, max_attempts, run_at, unique_key, tags
    FROM input
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running')
    DO NOTHING
    RETURNING id, queue, state, attempt
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, to_state, attempt, actor)
    SELECT id, 'enqueued', state, attempt, %(actor)s FROM inserted
), notified AS (
    SELECT pg_notify('pgqueue_jobs', queue) FROM (SELECT DISTINCT queue FROM inserted WHERE state = 'available') AS q
)
SELECT id, (SELECT count(*) FROM notified) AS notified FROM inserted;

-- name: insert_jobs
-- Ids are drawn up front so the result can be returned in input order, and rows that lost a
-- unique_key conflict can be told apart from rows that were inserted.
WITH input AS (
    SELECT
        nextval('pgqueue.jobs_id_seq') AS id,
        i.ord, i.task, i.queue, i.priority, i.args::jsonb AS args, i.args_encrypted, i.max_attempts,
        COALESCE(i.run_at, now() + make_interval(secs => i.delay)) AS run_at,
        i.unique_key,
        CASE WHEN i.tags IS NULL THEN '{}'::text[]
             ELSE ARRAY(SELECT jsonb_array_elements_text(i.tags::jsonb)) END AS tags
    FROM unnest(
        %(tasks)b::text[], %(queues)b::text[], %(priorities)b::int[], %(args)b::text[], %(args_encrypted)b::bytea[],
        %(max_attempts)b::int[], %(run_ats)b::timestamptz[], %(delays)b::float8[], %(unique_keys)b::text[],
        %(tags)b::text[]
    ) WITH ORDINALITY AS i(task, queue, priority, args, args_encrypted, max_attempts, run_at, delay, unique_key, tags,
                           ord)
), inserted AS (
    INSERT INTO pgqueue.jobs (id, task, queue, state, priority, args, args_encrypted, max_attempts, run_at,
                              unique_key, tags)
    SELECT id, task, queue, CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END,
           priority, args, args_encrypted, max_attempts, run_at, unique_key, tags
    FROM input
    ORDER BY ord
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running')
    DO NOTHING
    RETURNING id, queue, state, attempt, unique_key
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, to_state, attempt, actor)
    SELECT id, 'enqueued', state, attempt, %(actor)s FROM inserted
), notified AS (
    SELECT pg_notify('pgqueue_jobs', queue) FROM (SELECT DISTINCT queue FROM inserted WHERE state = 'available') AS q
)
-- Rows that lost a unique_key conflict come back with inserted = false; the caller resolves them.
SELECT input.id, input.unique_key, ins.id IS NOT NULL AS inserted, (SELECT count(*) FROM notified) AS notified
FROM input
LEFT JOIN inserted AS ins ON ins.id = input.id
ORDER BY input.ord;

-- name: reserve_job_ids
-- The COPY path of enqueue_many (jobs that are available at once and have no unique_key): ids
-- for the rows about to be copied, in input order. The caller wraps reserve_job_ids, copy_jobs,
-- copy_job_events and notify_queues in one savepoint or transaction.
SELECT nextval('pgqueue.jobs_id_seq') FROM generate_series(1, %(count)s::int);

-- name: notify_queues
-- Sent by PostgreSQL only if the transaction commits.
SELECT pg_notify('pgqueue_jobs', queue) FROM unnest(%(queues)s::text[]) AS queue;

-- name: copy_jobs
-- The columns left out take the table's defaults: state 'available', run_at and enqueued_at now().
COPY pgqueue.jobs (id, task, queue, priority, args, args_encrypted, max_attempts, tags) FROM STDIN;

-- name: copy_job_events
COPY pgqueue.job_events (job_id, event, to_state, attempt, actor) FROM STDIN;

-- name: savepoint_enqueue_many
-- enqueue_many over several statements is all or nothing inside the caller's transaction.
SAVEPOINT pgqueue_enqueue_many;

-- name: rollback_to_enqueue_many
ROLLBACK TO SAVEPOINT pgqueue_enqueue_many;

-- name: release_enqueue_many
RELEASE SAVEPOINT pgqueue_enqueue_many;

-- name: find_live_job_by_unique_key
SELECT id FROM pgqueue.jobs
WHERE unique_key = %(unique_key)s AND state IN ('scheduled', 'available', 'running');

-- name: claim_jobs
-- MATERIALIZED keeps the LIMIT applied before the UPDATE, so a batch never takes more rows than
-- it asked for. Paused queues are an anti-join, not `queue <> ALL (ARRAY(...))`: the planner
-- estimates the latter at one row when one queue holds most jobs, and then sorts the whole
-- backlog on every claim (375 ms per claim at 1M waiting, against 2 ms). FOR NO KEY UPDATE (not FOR UPDATE) lets audit rows and other readers proceed.
-- SKIP LOCKED lets concurrent workers pass each other instead of queueing on the same rows.
WITH picked AS MATERIALIZED (
    SELECT id FROM pgqueue.jobs
    WHERE state = 'available'
      AND queue = ANY(%(queues)b::text[])
      AND NOT EXISTS (SELECT 1 FROM pgqueue.queues AS q WHERE q.name = jobs.queue AND q.paused)
    ORDER BY priority, run_at, id
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
), claimed AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'running', attempt = j.attempt + 1, worker_id = %(worker_id)s,
        lease_token = %(lease_token)s::uuid, started_at = now(), progress = NULL, progress_note = NULL
    FROM picked
    WHERE j.id = picked.id
    RETURNING j.id, j.task, j.queue, j.args, j.attempt, j.max_attempts, j.enqueued_at, j.priority, j.tags,
              j.args_encrypted
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, worker_id)
    SELECT id, 'claimed', 'available', 'running', attempt, %(worker_id)s FROM claimed
)
SELECT id, task, queue, args, attempt, max_attempts, enqueued_at, priority, tags, args_encrypted FROM claimed;

-- name: claim_jobs_any_queue
-- The same claim for a worker serving every queue; a separate query so the planner can use the
-- queue-less claim index.
WITH picked AS MATERIALIZED (
    SELECT id FROM pgqueue.jobs
    WHERE state = 'available'
      AND NOT EXISTS (SELECT 1 FROM pgqueue.queues AS q WHERE q.name = jobs.queue AND q.paused)
    ORDER BY priority, run_at, id
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
), claimed AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'running', attempt = j.attempt + 1, worker_id = %(worker_id)s,
        lease_token = %(lease_token)s::uuid, started_at = now(), progress = NULL, progress_note = NULL
    FROM picked
    WHERE j.id = picked.id
    RETURNING j.id, j.task, j.queue, j.args, j.attempt, j.max_attempts, j.enqueued_at, j.priority, j.tags,
              j.args_encrypted
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, worker_id)
    SELECT id, 'claimed', 'available', 'running', attempt, %(worker_id)s FROM claimed
)
SELECT id, task, queue, args, attempt, max_attempts, enqueued_at, priority, tags, args_encrypted FROM claimed;

-- name: complete_jobs
-- Group commit: many finished jobs in one statement. The lease token fences out a worker whose
-- claim was rescued and re-run elsewhere; ids missing from the result lost their lease.
WITH done AS (
    SELECT * FROM unnest(%(ids)b::bigint[], %(tokens)b::uuid[], %(results)b::text[], %(results_encrypted)b::bytea[],
                         %(progress)b::real[], %(progress_notes)b::text[])
        AS d(id, token, result, result_encrypted, progress, progress_note)
), updated AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'completed', finished_at = now(), result = d.result::jsonb, result_encrypted = d.result_encrypted,
        progress = COALESCE(d.progress, j.progress), progress_note = COALESCE(d.progress_note, j.progress_note)
    FROM done AS d
    WHERE j.id = d.id AND j.lease_token = d.token AND j.state = 'running'
    RETURNING j.id, j.attempt, j.worker_id
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, worker_id)
    SELECT id, 'completed', 'running', 'completed', attempt, worker_id FROM updated
), woken AS (
    -- One wake-up per statement for pgqueue.admin.wait_for_job; waiters re-read their job by id.
    SELECT pg_notify('pgqueue_done', '') FROM (SELECT 1 FROM updated LIMIT 1) AS any_row
)
SELECT id, (SELECT count(*) FROM woken) AS notified FROM updated;

-- name: fail_jobs
-- A failed attempt: the worker decided the next state (scheduled/available for a retry, failed
-- when no attempts are left or the handler discarded it) and the event name.
WITH failed AS (
    SELECT * FROM unnest(%(ids)b::bigint[], %(tokens)b::uuid[], %(states)b::text[], %(delays)b::float8[],
                         %(errors)b::text[], %(errors_encrypted)b::bytea[], %(events)b::text[])
        AS f(id, token, state, delay, error, error_encrypted, event)
), updated AS (
    UPDATE pgqueue.jobs AS j
    SET state = f.state,
        run_at = CASE WHEN f.state = 'failed' THEN j.run_at ELSE now() + make_interval(secs => f.delay) END,
        finished_at = CASE WHEN f.state = 'failed' THEN now() END,
        last_error = f.error::jsonb,
        error_encrypted = f.error_encrypted
    FROM failed AS f
    WHERE j.id = f.id AND j.lease_token = f.token AND j.state = 'running'
    RETURNING j.id, j.queue, j.state, j.attempt, j.worker_id, f.event, j.last_error ->> 'type' AS error_type
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, worker_id, detail)
    SELECT id, event, 'running', state, attempt, worker_id, jsonb_build_object('error_type', error_type)
    FROM updated
), notified AS (
    SELECT pg_notify('pgqueue_jobs', queue) FROM (SELECT DISTINCT queue FROM updated WHERE state = 'available') AS q
), woken AS (
    SELECT pg_notify('pgqueue_done', '') FROM (SELECT 1 FROM updated WHERE state = 'failed' LIMIT 1) AS any_row
)
SELECT id, (SELECT count(*) FROM notified) + (SELECT count(*) FROM woken) AS notified FROM updated;

-- name: release_jobs
-- Graceful shutdown hands unfinished jobs back at once. The interrupted attempt is not counted
-- (attempt is decremented) so a deploy never pushes a job towards the dead-letter state.
WITH released AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'available', attempt = GREATEST(j.attempt - 1, 0), run_at = now(), lease_token = NULL
    FROM unnest(%(ids)b::bigint[], %(tokens)b::uuid[]) AS r(id, token)
    WHERE j.id = r.id AND j.lease_token = r.token AND j.state = 'running'
    RETURNING j.id, j.queue, j.attempt, j.worker_id
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, worker_id, detail)
    SELECT id, 'released', 'running', 'available', attempt, worker_id,
           jsonb_build_object('reason', 'worker shutdown', 'counted_attempt', false)
    FROM released
), notified AS (
    SELECT pg_notify('pgqueue_jobs', queue) FROM (SELECT DISTINCT queue FROM released) AS q
)
SELECT id, (SELECT count(*) FROM notified) AS notified FROM released;

-- name: release_lost_claims
-- Jobs running under this worker that the worker is not tracking: a claim committed but its
-- reply was lost with the connection. The worker is alive, so no rescue would ever find them;
-- it hands them back itself. The lost claim's attempt is not counted.
WITH lost AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'available', attempt = GREATEST(j.attempt - 1, 0), run_at = now(), lease_token = NULL
    WHERE j.state = 'running' AND j.worker_id = %(worker_id)s AND NOT (j.id = ANY(%(tracked)b::bigint[]))
    RETURNING j.id, j.queue, j.attempt, j.worker_id
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, worker_id, detail)
    SELECT id, 'released', 'running', 'available', attempt, worker_id,
           jsonb_build_object('reason', 'claim reply lost', 'counted_attempt', false)
    FROM lost
), notified AS (
    SELECT pg_notify('pgqueue_jobs', queue) FROM (SELECT DISTINCT queue FROM lost) AS q
)
SELECT id, (SELECT count(*) FROM notified) AS notified FROM lost;

-- name: update_progress
UPDATE pgqueue.jobs AS j
SET progress = p.progress, progress_note = p.note
FROM unnest(%(ids)b::bigint[], %(tokens)b::uuid[], %(progress)b::real[], %(notes)b::text[]) AS p(id, token, progress, note)
WHERE j.id = p.id AND j.lease_token = p.token AND j.state = 'running';

-- name: lock_running_job
-- A transactional handler's completion: lock the row under the claim's token first, so the
-- handler's writes and the completion commit together or not at all.
SELECT id FROM pgqueue.jobs
WHERE id = %(id)s AND lease_token = %(token)s::uuid AND state = 'running'
FOR NO KEY UPDATE;

-- name: stage_jobs
-- Scheduled jobs whose time has come become claimable (run by the maintenance leader).
WITH due AS MATERIALIZED (
    SELECT id FROM pgqueue.jobs
    WHERE state = 'scheduled' AND run_at <= now()
    ORDER BY run_at
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
), staged AS (
    UPDATE pgqueue.jobs AS j SET state = 'available'
    FROM due WHERE j.id = due.id
    RETURNING j.id, j.queue, j.attempt
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt)
    SELECT id, 'available', 'scheduled', 'available', attempt FROM staged
), notified AS (
    SELECT pg_notify('pgqueue_jobs', queue) FROM (SELECT DISTINCT queue FROM staged) AS q
)
SELECT count(*) AS staged, (SELECT count(*) FROM notified) AS notified FROM staged;

-- name: rescue_jobs
-- Running jobs whose worker stopped heartbeating go back to available, or to failed when they
-- have no attempts left. The lease token is cleared, so the lost worker's late ack is refused.
-- A lease also holds for its full length after the server (re)started: while the database was
-- down no worker could heartbeat, and rescuing then would re-run jobs whose live workers were
-- only reconnecting.
WITH orphaned AS MATERIALIZED (
    SELECT j.id FROM pgqueue.jobs AS j
    WHERE j.state = 'running'
      AND NOT EXISTS (
          SELECT 1 FROM pgqueue.workers AS w
          WHERE w.id = j.worker_id
            AND (w.lease_expires_at > now()
                 OR pg_postmaster_start_time() + (w.lease_expires_at - w.heartbeat_at) > now())
      )
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
), rescued AS (
    UPDATE pgqueue.jobs AS j
    SET state = CASE WHEN j.attempt >= j.max_attempts THEN 'failed' ELSE 'available' END,
        finished_at = CASE WHEN j.attempt >= j.max_attempts THEN now() END,
        run_at = now(),
        lease_token = NULL,
        last_error = jsonb_build_object(
            'type', 'LeaseExpired',
            'message', 'worker ' || COALESCE(j.worker_id, '?') || ' stopped heartbeating while the job ran')
    FROM orphaned
    WHERE j.id = orphaned.id
    RETURNING j.id, j.queue, j.state, j.attempt, j.worker_id
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, worker_id, detail)
    SELECT id, 'rescued', 'running', state, attempt, worker_id, jsonb_build_object('error_type', 'LeaseExpired')
    FROM rescued
), notified AS (
    SELECT pg_notify('pgqueue_jobs', queue) FROM (SELECT DISTINCT queue FROM rescued WHERE state = 'available') AS q
), woken AS (
    SELECT pg_notify('pgqueue_done', '') FROM (SELECT 1 FROM rescued WHERE state = 'failed' LIMIT 1) AS any_row
)
SELECT id, state, (SELECT count(*) FROM notified) + (SELECT count(*) FROM woken) AS notified FROM rescued;

-- name: get_job
SELECT id, task, queue, state, priority, args, attempt, max_attempts, run_at, enqueued_at, started_at,
       finished_at, progress, progress_note, result, last_error, unique_key, tags, worker_id,
       args_encrypted IS NOT NULL AS args_encrypted, result_encrypted IS NOT NULL AS result_encrypted,
       error_encrypted IS NOT NULL AS error_encrypted
FROM pgqueue.jobs WHERE id = %(id)s;

-- name: list_jobs
SELECT id, task, queue, state, priority, args, attempt, max_attempts, run_at, enqueued_at, started_at,
       finished_at, progress, progress_note, result, last_error, unique_key, tags, worker_id,
       args_encrypted IS NOT NULL AS args_encrypted, result_encrypted IS NOT NULL AS result_encrypted,
       error_encrypted IS NOT NULL AS error_encrypted
FROM pgqueue.jobs
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(state)s::text IS NULL OR state = %(state)s::text)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: retry_jobs
-- Failed or cancelled jobs go back to available now. A job that used all its attempts gets one
-- more, so a manual retry always runs at least once.
-- The rows are locked first so the audit row can record the state each job left.
WITH before AS MATERIALIZED (
    SELECT id, state FROM pgqueue.jobs AS j
    WHERE j.state IN ('failed', 'cancelled')
      AND (%(ids)b::bigint[] IS NULL OR j.id = ANY(%(ids)b::bigint[]))
      AND (%(only_failed)s::boolean IS FALSE OR j.state = 'failed')
      AND (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
    FOR NO KEY UPDATE
), retried AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'available', run_at = now(), finished_at = NULL, lease_token = NULL,
        max_attempts = GREATEST(j.max_attempts, j.attempt + 1)
    FROM before
    WHERE j.id = before.id
    RETURNING j.id, j.queue, j.attempt, before.state AS from_state
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, actor)
    SELECT id, 'retried', from_state, 'available', attempt, %(actor)s FROM retried
), notified AS (
    SELECT pg_notify('pgqueue_jobs', queue) FROM (SELECT DISTINCT queue FROM retried) AS q
)
SELECT id, (SELECT count(*) FROM notified) AS notified FROM retried;

-- name: cancel_job
-- A running job may be cancelled too: its worker's ack is then refused (state is no longer
-- running) and the outcome stays cancelled.
WITH before AS (
    SELECT id, state FROM pgqueue.jobs WHERE id = %(id)s FOR NO KEY UPDATE
), cancelled AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'cancelled', finished_at = now(), lease_token = NULL
    FROM before
    WHERE j.id = before.id AND before.state IN ('scheduled', 'available', 'running')
    RETURNING j.id, before.state AS from_state, j.attempt
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, actor)
    SELECT id, 'cancelled', from_state, 'cancelled', attempt, %(actor)s FROM cancelled
), woken AS (
    SELECT pg_notify('pgqueue_done', '') FROM cancelled
)
SELECT before.state AS previous_state, (SELECT count(*) FROM cancelled) AS cancelled,
       (SELECT count(*) FROM woken) AS notified FROM before;

-- name: delete_job
WITH deleted AS (
    DELETE FROM pgqueue.jobs WHERE id = %(id)s AND state <> 'running'
    RETURNING id, state, attempt
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, attempt, actor)
    SELECT id, 'deleted', state, attempt, %(actor)s FROM deleted
)
SELECT id FROM deleted;

-- name: purge_queue
WITH purged AS (
    DELETE FROM pgqueue.jobs
    WHERE queue = %(queue)s
      AND state <> 'running'
      AND (%(state)s::text IS NULL OR state = %(state)s::text)
    RETURNING id, state, attempt
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, attempt, actor, detail)
    SELECT id, 'purged', state, attempt, %(actor)s, jsonb_build_object('queue', %(queue)s::text) FROM purged
)
SELECT count(*) AS purged FROM purged;

-- name: count_stale_ciphertexts
-- Ciphertexts not under the newest key (bytes 2-9 of each are its key id): what `keys rotate` has
-- left to do. A full scan, fine for an operator's command.
SELECT count(*) AS jobs,
       count(*) FILTER (WHERE substring(args_encrypted FROM 2 FOR 8) <> %(key_id)s) AS args,
       count(*) FILTER (WHERE substring(result_encrypted FROM 2 FOR 8) <> %(key_id)s) AS results,
       count(*) FILTER (WHERE substring(error_encrypted FROM 2 FOR 8) <> %(key_id)s) AS errors
FROM pgqueue.jobs
WHERE substring(args_encrypted FROM 2 FOR 8) <> %(key_id)s
   OR substring(result_encrypted FROM 2 FOR 8) <> %(key_id)s
   OR substring(error_encrypted FROM 2 FOR 8) <> %(key_id)s;

-- name: lock_stale_ciphertexts
-- One batch for `keys rotate`, in id order after a cursor so a row that cannot be re-encrypted is
-- passed over, not fetched forever. SKIP LOCKED: a row a worker is claiming or acking right now is
-- left for the next run (the command reports what remains). Running jobs are included: their
-- worker already holds the plaintext args and its ack writes only result/error, after this lock.
SELECT id, task, args_encrypted, result_encrypted, error_encrypted
FROM pgqueue.jobs
WHERE id > %(after_id)s
  AND (substring(args_encrypted FROM 2 FOR 8) <> %(key_id)s
       OR substring(result_encrypted FROM 2 FOR 8) <> %(key_id)s
       OR substring(error_encrypted FROM 2 FOR 8) <> %(key_id)s)
ORDER BY id
LIMIT %(limit)s
FOR NO KEY UPDATE SKIP LOCKED;

-- name: update_ciphertexts
-- Writes back a batch re-encrypted under the newest key; a NULL keeps the column as it was.
UPDATE pgqueue.jobs AS j
SET args_encrypted = COALESCE(u.args_encrypted, j.args_encrypted),
    result_encrypted = COALESCE(u.result_encrypted, j.result_encrypted),
    error_encrypted = COALESCE(u.error_encrypted, j.error_encrypted)
FROM unnest(%(ids)b::bigint[], %(args_encrypted)b::bytea[], %(results_encrypted)b::bytea[],
            %(errors_encrypted)b::bytea[]) AS u(id, args_encrypted, result_encrypted, error_encrypted)
WHERE j.id = u.id;
