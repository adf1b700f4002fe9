-- Queries on pgqueue.jobs. Every state change writes its pgqueue.job_events row in the same
-- statement (a data-modifying CTE), so the audit trail commits or rolls back with the change.
-- NOTIFY: the channel is %(channel)s (pgqueue._db.notifications.NOTIFY_CHANNEL) in every file,
-- the payload the queue's name. pg_notify de-duplicates identical (channel, payload) pairs within a
-- transaction, so however many rows a statement touches, each queue is woken once per transaction.

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
        COALESCE(%(tags)b::text[], '{}') AS tags,
        %(group_key)s::text AS group_key
), inserted AS (
    INSERT INTO pgqueue.jobs (task, queue, state, priority, args, args_encrypted, max_attempts, run_at, tags, group_key)
    SELECT task, queue, CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END,
           priority, args, args_encrypted, max_attempts, run_at, tags, group_key
    FROM input
    RETURNING id, queue, state, attempt
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, to_state, attempt, actor)
    SELECT id, 'enqueued', state, attempt, %(actor)s FROM inserted
)
SELECT id, CASE WHEN state = 'available' THEN pg_notify(%(channel)s, queue) END FROM inserted;

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
        COALESCE(%(tags)b::text[], '{}') AS tags,
        %(group_key)s::text AS group_key
), inserted AS (
    INSERT INTO pgqueue.jobs (task, queue, state, priority, args, args_encrypted, max_attempts, run_at, unique_key,
                              tags, group_key)
    SELECT task, queue, CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END,
           priority, args, args_encrypted, max_attempts, run_at, unique_key, tags, group_key
    FROM input
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running')
    DO NOTHING
    RETURNING id, queue, state, attempt
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, to_state, attempt, actor)
    SELECT id, 'enqueued', state, attempt, %(actor)s FROM inserted
), notified AS (
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM inserted WHERE state = 'available') AS q
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
             ELSE ARRAY(SELECT jsonb_array_elements_text(i.tags::jsonb)) END AS tags,
        i.group_key
    FROM unnest(
        %(tasks)b::text[], %(queues)b::text[], %(priorities)b::int[], %(args)b::text[], %(args_encrypted)b::bytea[],
        %(max_attempts)b::int[], %(run_ats)b::timestamptz[], %(delays)b::float8[], %(unique_keys)b::text[],
        %(tags)b::text[], %(group_keys)b::text[]
    ) WITH ORDINALITY AS i(task, queue, priority, args, args_encrypted, max_attempts, run_at, delay, unique_key, tags,
                           group_key, ord)
), inserted AS (
    INSERT INTO pgqueue.jobs (id, task, queue, state, priority, args, args_encrypted, max_attempts, run_at,
                              unique_key, tags, group_key)
    SELECT id, task, queue, CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END,
           priority, args, args_encrypted, max_attempts, run_at, unique_key, tags, group_key
    FROM input
    ORDER BY ord
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running')
    DO NOTHING
    RETURNING id, queue, state, attempt, unique_key
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, to_state, attempt, actor)
    SELECT id, 'enqueued', state, attempt, %(actor)s FROM inserted
), notified AS (
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM inserted WHERE state = 'available') AS q
)
-- Rows that lost a unique_key conflict come back with inserted = false; the caller resolves them.
SELECT input.id, input.unique_key, ins.id IS NOT NULL AS inserted, (SELECT count(*) FROM notified) AS notified
FROM input
LEFT JOIN inserted AS ins ON ins.id = input.id
ORDER BY input.ord;

-- name: reserve_job_ids
-- The COPY path of enqueue_many (jobs that are available at once and have no unique_key): ids
-- for the rows about to be copied, in input order. The caller wraps reserve_job_ids, copy_jobs,
-- insert_copied_job_events and notify_queues in one savepoint or transaction.
SELECT nextval('pgqueue.jobs_id_seq') FROM generate_series(1, %(count)s::int);

-- name: notify_queues
-- Sent by PostgreSQL only if the transaction commits.
SELECT pg_notify(%(channel)s, queue) FROM unnest(%(queues)s::text[]) AS queue;

-- name: copy_jobs
-- The columns left out take the table's defaults: state 'available', run_at and enqueued_at now().
COPY pgqueue.jobs (id, task, queue, priority, args, args_encrypted, max_attempts, tags, group_key) FROM STDIN;

-- name: job_events_copyable
-- Whether this session may COPY into pgqueue.job_events: PostgreSQL refuses COPY FROM into a table
-- under row-level security for the roles it applies to (sql/roles.sql enables it on job_events).
SELECT NOT row_security_active('pgqueue.job_events');

-- name: copy_job_events
-- The 'enqueued' rows of the jobs copy_jobs wrote (all available at once), where job_events_copyable:
-- 50k rows took 151 ms against 261 ms for insert_copied_job_events (median of 5, same session).
COPY pgqueue.job_events (job_id, event, to_state, attempt, actor) FROM STDIN;

-- name: insert_copied_job_events
-- The same rows for a role under row-level security, which may not COPY.
INSERT INTO pgqueue.job_events (job_id, event, to_state, attempt, actor)
SELECT id, 'enqueued', 'available', 0, %(actor)s FROM unnest(%(ids)b::bigint[]) AS id;

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

-- name: task_is_encrypted
-- `pgqueue enqueue` without --encrypt: is the task declared encrypt=True by a started worker's code?
SELECT EXISTS (SELECT 1 FROM pgqueue.encrypted_tasks WHERE task = %(task)s);

-- name: claim_jobs
-- The claim of jobs that no limit holds back: today's claim, unchanged for unlimited queues.
-- MATERIALIZED keeps the LIMIT applied before the UPDATE, so a batch never takes more rows than
-- it asked for. Gated (paused or limited) queues are an anti-join, not `queue <> ALL (ARRAY(...))`:
-- the planner estimates the latter at one row when one queue holds most jobs, and then sorts the
-- whole backlog on every claim (375 ms per claim at 1M waiting, against 2 ms). A limited queue's
-- jobs are left to claim_limited_queue_jobs, which counts under the queue's lock. `gated` is one
-- generated boolean so that the estimate, and the plan, are the ones `paused` had. FOR NO KEY UPDATE
-- (not FOR UPDATE) lets audit rows and other readers proceed.
-- SKIP LOCKED lets concurrent workers pass each other instead of queueing on the same rows.
-- A task whose circuit breaker is open or half-open is skipped (its half-open trial is claimed by
-- breakers.sql claim_breaker_trial). NOT IN, not NOT EXISTS: it stays a hashed subplan (the few held
-- tasks read once per claim, a hash probe per row), while an anti-join on task is estimated from
-- the task column's statistics and, when one task holds the backlog, made the planner sort it all.
-- Unlike the any-queue claims below, this one is re-planned for every claim on purpose: which index
-- to walk depends on how much of the backlog the named queues hold, which a generic plan cannot know
-- (it would walk the queue-less index past a busy queue's backlog to find a rare queue's jobs).
WITH picked AS MATERIALIZED (
    SELECT id FROM pgqueue.jobs
    WHERE state = 'available'
      AND queue = ANY(%(queues)b::text[])
      AND NOT EXISTS (SELECT 1 FROM pgqueue.queues AS q WHERE q.name = jobs.queue AND q.gated)
      AND jobs.task NOT IN (SELECT b.task FROM pgqueue.circuit_breakers AS b WHERE b.state <> 'closed')
    ORDER BY priority, run_at, id
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
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
)
SELECT id, task, queue, args, attempt, max_attempts, enqueued_at, priority, tags, args_encrypted FROM claimed;

-- name: claim_jobs_any_queue
-- The same claim for a worker serving every queue; a separate query so the planner can use the
-- queue-less claim index. Planned once, not per claim: with no queue parameter, the plan for one
-- claim fits every claim, but a LIMIT parameter on the locking scan makes the generic plan
-- (costed for a tenth of the table) look so dear that PostgreSQL re-plans every execution, about
-- 0.2-0.3 ms of server CPU per claim. The locking scan is bounded by a constant instead (the
-- largest batch a worker asks for, CLAIM_BATCH_MAX in pgqueue/_db/jobs.py), and the outer LIMIT
-- takes the batch: the executor pulls rows on demand, so only the rows the batch takes are read
-- and locked. No ORDER BY outside: a sort would pull (and lock) the whole page.
WITH picked AS MATERIALIZED (
    SELECT id FROM (
        SELECT id FROM pgqueue.jobs
        WHERE state = 'available'
          AND NOT EXISTS (SELECT 1 FROM pgqueue.queues AS q WHERE q.name = jobs.queue AND q.gated)
          AND jobs.task NOT IN (SELECT b.task FROM pgqueue.circuit_breakers AS b WHERE b.state <> 'closed')
        ORDER BY priority, run_at, id
        LIMIT 200
        FOR NO KEY UPDATE SKIP LOCKED
    ) AS page
    LIMIT %(limit)s
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
)
SELECT id, task, queue, args, attempt, max_attempts, enqueued_at, priority, tags, args_encrypted FROM claimed;

-- name: claim_jobs_except_limited_tasks
-- claim_jobs while some task has limits (pgqueue.task_limits has rows): those tasks' jobs are
-- left to claim_limited_task_jobs. A separate query so that with no task limits the claim above
-- keeps its plan. The worker passes the limited tasks it knows (its own, and the table's as read
-- about every second): an anti-join on pgqueue.task_limits, estimated blind, made the planner
-- scan the whole table.
WITH picked AS MATERIALIZED (
    SELECT id FROM pgqueue.jobs
    WHERE state = 'available'
      AND queue = ANY(%(queues)b::text[])
      AND NOT EXISTS (SELECT 1 FROM pgqueue.queues AS q WHERE q.name = jobs.queue AND q.gated)
      AND task <> ALL(%(limited_tasks)b::text[])
      AND jobs.task NOT IN (SELECT b.task FROM pgqueue.circuit_breakers AS b WHERE b.state <> 'closed')
    ORDER BY priority, run_at, id
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
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
)
SELECT id, task, queue, args, attempt, max_attempts, enqueued_at, priority, tags, args_encrypted FROM claimed;

-- name: claim_jobs_any_queue_except_limited_tasks
-- Re-planned for every claim, unlike claim_jobs_any_queue: PostgreSQL prices the generic plan of
-- `task <> ALL(...)` (limited tasks unknown) above the re-planned ones whatever the LIMIT is.
WITH picked AS MATERIALIZED (
    SELECT id FROM pgqueue.jobs
    WHERE state = 'available'
      AND NOT EXISTS (SELECT 1 FROM pgqueue.queues AS q WHERE q.name = jobs.queue AND q.gated)
      AND task <> ALL(%(limited_tasks)b::text[])
      AND jobs.task NOT IN (SELECT b.task FROM pgqueue.circuit_breakers AS b WHERE b.state <> 'closed')
    ORDER BY priority, run_at, id
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
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
)
SELECT id, task, queue, args, attempt, max_attempts, enqueued_at, priority, tags, args_encrypted FROM claimed;

-- name: list_limited_scopes
-- What the claimer must claim under a lock: limited queues and limited tasks. Re-read before the
-- next claim when a change is announced (pgqueue.announce_limits, migration 0013), and about every
-- second while claiming, so a limit set with `pgqueue queues set` takes effect at once (the claims
-- above stop taking a limited queue's jobs at once anyway: their anti-join reads the settings).
SELECT 'queue' AS kind, name FROM pgqueue.queues WHERE concurrency IS NOT NULL OR rate_limit IS NOT NULL
UNION ALL
SELECT 'task', task FROM pgqueue.task_limits
ORDER BY 1, 2;

-- name: lock_queue_limits
-- Limited claims run as two statements in one transaction: this lock, then the claim. Under READ
-- COMMITTED the claim takes its snapshot after the lock is granted, so it counts the running jobs
-- and starts that the previous holder committed. (Lock and count in one statement would count
-- from a snapshot taken before the wait, and let two claims both see room for the same slot.)
-- The limited claims stamp starts (started_at, the rate ledger) with statement_timestamp(), the
-- claim statement's start, which is after the lock was granted: stamps then increase in lock order,
-- which is what makes the sliding window exact (now() is the transaction's start, before the wait).
-- A transaction-scoped advisory lock: released at commit, and safe behind PgBouncer. Both statements
-- go in one pipeline, the implicit transaction of its sync (one round trip, no BEGIN or COMMIT).
-- The plan cache mode, for this transaction only, lets the claim that follows use its generic plan
-- (see claim_limited_queue_jobs_all_tasks) or keeps the server's choice ('auto').
SELECT pg_advisory_xact_lock(hashtextextended('pgqueue:queue:' || %(queue)s::text, 0)),
       set_config('plan_cache_mode', %(plan_cache_mode)s::text, true);

-- name: lock_task_limits
-- The task's lock, and the locks of the limited queues its jobs may be in: a task pass counts both.
-- Keys are taken in one order by every claim, so claims never deadlock.
SELECT pg_advisory_xact_lock(key)
FROM (
    SELECT DISTINCT hashtextextended(scope, 0) AS key
    FROM (
        SELECT 'pgqueue:task:' || %(task)s::text AS scope
        UNION ALL
        SELECT 'pgqueue:queue:' || q.name FROM pgqueue.queues AS q
        WHERE (q.concurrency IS NOT NULL OR q.rate_limit IS NOT NULL)
          AND (%(queues)b::text[] IS NULL OR q.name = ANY(%(queues)b::text[]))
    ) AS scopes
    ORDER BY key
) AS keys;

-- name: claim_limited_queue_jobs
-- A limited queue's claim, run after lock_queue_limits in the same transaction: at most what the
-- queue's concurrency (running jobs across all workers) and rate (starts in the sliding window,
-- pgqueue.rate_starts) still allow. Jobs of limited tasks are left to their task's claim. The
-- candidates are the same index range scan as claim_jobs, with a smaller LIMIT. The first columns
-- are what the limits allowed this claim and what they allow in all (returned even when nothing
-- was claimed).
WITH settings AS (
    SELECT q.concurrency, q.rate_limit, make_interval(secs => q.rate_period_seconds) AS period
    FROM pgqueue.queues AS q
    WHERE q.name = %(queue)s AND NOT q.paused AND (q.concurrency IS NOT NULL OR q.rate_limit IS NOT NULL)
), headroom AS (
    -- What the limits still allow, whatever the claim asks: the worker prefetches for a queue only
    -- while this stays far above its batch. LEAST ignores NULLs: a limit that is not set does not
    -- bound. No settings row (resumed into unlimited, or paused): 0 here, and the unlimited claim
    -- or nobody takes the jobs.
    SELECT COALESCE((
        SELECT GREATEST(LEAST(
            s.concurrency - (SELECT count(*) FROM pgqueue.jobs AS r WHERE r.state = 'running' AND r.queue = %(queue)s),
            s.rate_limit - (SELECT COALESCE(sum(r.starts), 0) FROM pgqueue.rate_starts AS r
                            WHERE r.scope = 'queue:' || %(queue)s::text AND r.at > statement_timestamp() - s.period)), 0)
        FROM settings AS s), 0) AS room
), allowance AS (
    SELECT LEAST(%(limit)s::bigint, h.room) AS n, h.room FROM headroom AS h
), picked AS MATERIALIZED (
    -- As in claim_jobs_any_queue: the locking scan bounded by a constant (CLAIM_BATCH_MAX), the
    -- batch (the allowance, never more than the claim's limit) taken by the outer LIMIT; only the
    -- rows the batch takes are read and locked.
    SELECT id FROM (
        SELECT id FROM pgqueue.jobs
        WHERE state = 'available'
          AND queue = %(queue)s
          AND task <> ALL(%(limited_tasks)b::text[])
          AND jobs.task NOT IN (SELECT b.task FROM pgqueue.circuit_breakers AS b WHERE b.state <> 'closed')
        ORDER BY priority, run_at, id
        LIMIT 200
        FOR NO KEY UPDATE SKIP LOCKED
    ) AS page
    LIMIT (SELECT n FROM allowance)
), claimed AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'running', attempt = j.attempt + 1, worker_id = %(worker_id)s,
        lease_token = %(lease_token)s::uuid, started_at = statement_timestamp(), progress = NULL, progress_note = NULL,
        progress_note_encrypted = NULL
    -- By primary key: the LIMIT is computed, so the planner cannot size `picked` and would
    -- otherwise hash-join it against a scan of the whole table.
    WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING j.id, j.task, j.queue, j.args, j.attempt, j.max_attempts, j.enqueued_at, j.priority, j.tags,
              j.args_encrypted
), pruned AS (
    -- The ledger keeps only the window: starts that left it are deleted by the scope's next claim.
    DELETE FROM pgqueue.rate_starts AS r
    USING settings AS s
    WHERE r.scope = 'queue:' || %(queue)s::text AND s.rate_limit IS NOT NULL AND r.at <= statement_timestamp() - s.period
), ledger AS (
    -- One row per claim, counting its starts: they share the claim's timestamp.
    INSERT INTO pgqueue.rate_starts (scope, at, starts)
    SELECT 'queue:' || %(queue)s::text, statement_timestamp(), count(*) FROM claimed
    WHERE EXISTS (SELECT 1 FROM settings WHERE rate_limit IS NOT NULL)
    HAVING count(*) > 0
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, worker_id)
    SELECT id, 'claimed', 'available', 'running', attempt, %(worker_id)s FROM claimed
)
-- `waiting`: whether any job of the queue was claimable (this statement's snapshot, so the ones it
-- claimed count): a worker held back by the limit polls again soon only when something waits.
SELECT a.n AS allowance, a.room AS headroom,
       -- A scalar subquery in claim order with LIMIT 1: the claim index's first entry. (EXISTS would
       -- drop the ORDER BY and let the planner scan the table.)
       (SELECT w.id FROM pgqueue.jobs AS w WHERE w.state = 'available' AND w.queue = %(queue)s
        AND w.task <> ALL(%(limited_tasks)b::text[])
        AND w.task NOT IN (SELECT b.task FROM pgqueue.circuit_breakers AS b WHERE b.state <> 'closed')
        ORDER BY w.priority, w.run_at, w.id LIMIT 1) IS NOT NULL AS waiting,
       c.id, c.task, c.queue, c.args, c.attempt, c.max_attempts, c.enqueued_at, c.priority, c.tags, c.args_encrypted
FROM allowance AS a LEFT JOIN claimed AS c ON true;

-- name: claim_limited_queue_jobs_all_tasks
-- The same claim when no task is limited (the usual case), without the task filter, run under a
-- generic plan (lock_queue_limits sets plan_cache_mode for its transaction). Planned per claim,
-- it cost more server time than it ran (0.5 ms against 0.3 ms for 8 jobs), and PostgreSQL would
-- not pick the generic plan itself: with the task filter, whose array it cannot see, a generic
-- plan estimates a table of few tasks at one row left and sorts it whole (60 ms on 100k jobs);
-- without it, the queue's index walk is the generic plan (tests/integration/test_claim_plan.py).
-- Otherwise the same statement line for line: a test fails when the two drift apart.
WITH settings AS (
    SELECT q.concurrency, q.rate_limit, make_interval(secs => q.rate_period_seconds) AS period
    FROM pgqueue.queues AS q
    WHERE q.name = %(queue)s AND NOT q.paused AND (q.concurrency IS NOT NULL OR q.rate_limit IS NOT NULL)
), headroom AS (
    -- What the limits still allow, whatever the claim asks: the worker prefetches for a queue only
    -- while this stays far above its batch. LEAST ignores NULLs: a limit that is not set does not
    -- bound. No settings row (resumed into unlimited, or paused): 0 here, and the unlimited claim
    -- or nobody takes the jobs.
    SELECT COALESCE((
        SELECT GREATEST(LEAST(
            s.concurrency - (SELECT count(*) FROM pgqueue.jobs AS r WHERE r.state = 'running' AND r.queue = %(queue)s),
            s.rate_limit - (SELECT COALESCE(sum(r.starts), 0) FROM pgqueue.rate_starts AS r
                            WHERE r.scope = 'queue:' || %(queue)s::text AND r.at > statement_timestamp() - s.period)), 0)
        FROM settings AS s), 0) AS room
), allowance AS (
    SELECT LEAST(%(limit)s::bigint, h.room) AS n, h.room FROM headroom AS h
), picked AS MATERIALIZED (
    -- As in claim_jobs_any_queue: the locking scan bounded by a constant (CLAIM_BATCH_MAX), the
    -- batch (the allowance, never more than the claim's limit) taken by the outer LIMIT; only the
    -- rows the batch takes are read and locked.
    SELECT id FROM (
        SELECT id FROM pgqueue.jobs
        WHERE state = 'available'
          AND queue = %(queue)s
          AND jobs.task NOT IN (SELECT b.task FROM pgqueue.circuit_breakers AS b WHERE b.state <> 'closed')
        ORDER BY priority, run_at, id
        LIMIT 200
        FOR NO KEY UPDATE SKIP LOCKED
    ) AS page
    LIMIT (SELECT n FROM allowance)
), claimed AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'running', attempt = j.attempt + 1, worker_id = %(worker_id)s,
        lease_token = %(lease_token)s::uuid, started_at = statement_timestamp(), progress = NULL, progress_note = NULL,
        progress_note_encrypted = NULL
    -- By primary key: the LIMIT is computed, so the planner cannot size `picked` and would
    -- otherwise hash-join it against a scan of the whole table.
    WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING j.id, j.task, j.queue, j.args, j.attempt, j.max_attempts, j.enqueued_at, j.priority, j.tags,
              j.args_encrypted
), pruned AS (
    -- The ledger keeps only the window: starts that left it are deleted by the scope's next claim.
    DELETE FROM pgqueue.rate_starts AS r
    USING settings AS s
    WHERE r.scope = 'queue:' || %(queue)s::text AND s.rate_limit IS NOT NULL AND r.at <= statement_timestamp() - s.period
), ledger AS (
    -- One row per claim, counting its starts: they share the claim's timestamp.
    INSERT INTO pgqueue.rate_starts (scope, at, starts)
    SELECT 'queue:' || %(queue)s::text, statement_timestamp(), count(*) FROM claimed
    WHERE EXISTS (SELECT 1 FROM settings WHERE rate_limit IS NOT NULL)
    HAVING count(*) > 0
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, worker_id)
    SELECT id, 'claimed', 'available', 'running', attempt, %(worker_id)s FROM claimed
)
-- `waiting`: whether any job of the queue was claimable (this statement's snapshot, so the ones it
-- claimed count): a worker held back by the limit polls again soon only when something waits.
SELECT a.n AS allowance, a.room AS headroom,
       -- A scalar subquery in claim order with LIMIT 1: the claim index's first entry. (EXISTS would
       -- drop the ORDER BY and let the planner scan the table.)
       (SELECT w.id FROM pgqueue.jobs AS w WHERE w.state = 'available' AND w.queue = %(queue)s
        AND w.task NOT IN (SELECT b.task FROM pgqueue.circuit_breakers AS b WHERE b.state <> 'closed')
        ORDER BY w.priority, w.run_at, w.id LIMIT 1) IS NOT NULL AS waiting,
       c.id, c.task, c.queue, c.args, c.attempt, c.max_attempts, c.enqueued_at, c.priority, c.tags, c.args_encrypted
FROM allowance AS a LEFT JOIN claimed AS c ON true;

-- name: claim_limited_task_jobs
-- A limited task's claim (concurrency, rate, group_concurrency from pgqueue.task_limits), run after
-- lock_task_limits in the same transaction, over the worker's queues (NULL: every queue). A job in
-- a limited queue is also held to that queue's room (its lock is held too). Groups: the jobs of
-- one group_key are ranked in (priority, run_at, id) order, and only the first
-- group_concurrency - running ones can be taken, so a group runs in order and groups side by side.
-- Reads every available job of the task (the window needs them): fine for thousands, not for a
-- backlog of millions of one limited task.
WITH settings AS (
    SELECT t.concurrency, t.rate_limit, make_interval(secs => t.rate_period_seconds) AS period,
           t.group_concurrency
    FROM pgqueue.task_limits AS t WHERE t.task = %(task)s
), allowance AS (
    SELECT COALESCE((
        SELECT GREATEST(LEAST(
            %(limit)s::bigint,
            s.concurrency - (SELECT count(*) FROM pgqueue.jobs AS r WHERE r.state = 'running' AND r.task = %(task)s),
            s.rate_limit - (SELECT COALESCE(sum(r.starts), 0) FROM pgqueue.rate_starts AS r
                            WHERE r.scope = 'task:' || %(task)s::text AND r.at > statement_timestamp() - s.period)), 0)
        FROM settings AS s), 0) AS n
), queue_room AS (
    SELECT q.name, q.rate_limit,
           GREATEST(LEAST(
               q.concurrency - (SELECT count(*) FROM pgqueue.jobs AS r WHERE r.state = 'running' AND r.queue = q.name),
               q.rate_limit - (SELECT COALESCE(sum(r.starts), 0) FROM pgqueue.rate_starts AS r
                               WHERE r.scope = 'queue:' || q.name
                                 AND r.at > statement_timestamp() - make_interval(secs => q.rate_period_seconds))), 0) AS n
    FROM pgqueue.queues AS q
    WHERE (q.concurrency IS NOT NULL OR q.rate_limit IS NOT NULL)
      AND (%(queues)b::text[] IS NULL OR q.name = ANY(%(queues)b::text[]))
), group_running AS (
    SELECT r.group_key, count(*) AS n FROM pgqueue.jobs AS r
    WHERE r.state = 'running' AND r.task = %(task)s AND r.group_key IS NOT NULL
    GROUP BY r.group_key
), candidates AS (
    SELECT j.id, j.queue, j.priority, j.run_at, j.group_key,
           row_number() OVER (PARTITION BY j.group_key ORDER BY j.priority, j.run_at, j.id) AS group_rank
    FROM pgqueue.jobs AS j
    WHERE j.state = 'available' AND j.task = %(task)s
      AND (%(queues)b::text[] IS NULL OR j.queue = ANY(%(queues)b::text[]))
      AND NOT EXISTS (SELECT 1 FROM pgqueue.queues AS q WHERE q.name = j.queue AND q.paused)
      AND j.task NOT IN (SELECT b.task FROM pgqueue.circuit_breakers AS b WHERE b.state <> 'closed')
), within_groups AS (
    SELECT c.id, c.queue, c.priority, c.run_at,
           row_number() OVER (PARTITION BY c.queue ORDER BY c.priority, c.run_at, c.id) AS queue_rank
    FROM candidates AS c LEFT JOIN group_running AS g ON g.group_key = c.group_key
    WHERE c.group_key IS NULL
       OR (SELECT group_concurrency FROM settings) IS NULL
       OR c.group_rank <= (SELECT group_concurrency FROM settings) - COALESCE(g.n, 0)
), chosen AS (
    SELECT w.id FROM within_groups AS w LEFT JOIN queue_room AS qr ON qr.name = w.queue
    WHERE qr.name IS NULL OR w.queue_rank <= qr.n
    ORDER BY w.priority, w.run_at, w.id
    LIMIT (SELECT n FROM allowance)
), picked AS MATERIALIZED (
    SELECT id FROM pgqueue.jobs
    WHERE id IN (SELECT id FROM chosen) AND state = 'available'
    FOR NO KEY UPDATE SKIP LOCKED
), claimed AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'running', attempt = j.attempt + 1, worker_id = %(worker_id)s,
        lease_token = %(lease_token)s::uuid, started_at = statement_timestamp(), progress = NULL, progress_note = NULL,
        progress_note_encrypted = NULL
    -- By primary key: the LIMIT is computed, so the planner cannot size `picked` and would
    -- otherwise hash-join it against a scan of the whole table.
    WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING j.id, j.task, j.queue, j.args, j.attempt, j.max_attempts, j.enqueued_at, j.priority, j.tags,
              j.args_encrypted
), pruned AS (
    DELETE FROM pgqueue.rate_starts AS r
    WHERE (r.scope = 'task:' || %(task)s::text
           AND r.at <= statement_timestamp() - (SELECT period FROM settings WHERE rate_limit IS NOT NULL))
       OR (r.scope IN (SELECT 'queue:' || name FROM queue_room WHERE rate_limit IS NOT NULL)
           AND r.at <= statement_timestamp() - (SELECT make_interval(secs => q.rate_period_seconds) FROM pgqueue.queues AS q
                                WHERE 'queue:' || q.name = r.scope))
), ledger AS (
    -- One row per claim and scope, counting its starts: they share the claim's timestamp.
    INSERT INTO pgqueue.rate_starts (scope, at, starts)
    SELECT 'task:' || %(task)s::text, statement_timestamp(), count(*) FROM claimed
    WHERE EXISTS (SELECT 1 FROM settings WHERE rate_limit IS NOT NULL)
    HAVING count(*) > 0
    UNION ALL
    SELECT 'queue:' || c.queue, statement_timestamp(), count(*) FROM claimed AS c JOIN queue_room AS qr ON qr.name = c.queue
    WHERE qr.rate_limit IS NOT NULL
    GROUP BY c.queue
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, worker_id)
    SELECT id, 'claimed', 'available', 'running', attempt, %(worker_id)s FROM claimed
)
-- The first column counts the task's claimable jobs (claimed ones included): more than were claimed
-- means a limit or a running group head held some back, and the worker polls again soon.
SELECT w.n AS waiting, c.id, c.task, c.queue, c.args, c.attempt, c.max_attempts, c.enqueued_at, c.priority, c.tags,
       c.args_encrypted
FROM (SELECT count(*) AS n FROM candidates) AS w LEFT JOIN claimed AS c ON true;

-- name: sync_task_limits
-- A worker's start: the limits its code declares for its tasks. Tasks with no limit lose their
-- row, so removing a limit from the code removes it from the database at the next deploy.
WITH declared AS (
    SELECT * FROM unnest(%(tasks)b::text[], %(concurrency)b::int[], %(rate_limits)b::int[],
                         %(rate_periods)b::int[], %(group_concurrency)b::int[])
        AS d(task, concurrency, rate_limit, rate_period_seconds, group_concurrency)
), removed AS (
    DELETE FROM pgqueue.task_limits AS t
    USING declared AS d
    WHERE t.task = d.task AND d.concurrency IS NULL AND d.rate_limit IS NULL AND d.group_concurrency IS NULL
)
INSERT INTO pgqueue.task_limits AS t (task, concurrency, rate_limit, rate_period_seconds, group_concurrency)
SELECT task, concurrency, rate_limit, rate_period_seconds, group_concurrency FROM declared
WHERE concurrency IS NOT NULL OR rate_limit IS NOT NULL OR group_concurrency IS NOT NULL
ON CONFLICT (task) DO UPDATE
SET concurrency = EXCLUDED.concurrency, rate_limit = EXCLUDED.rate_limit,
    rate_period_seconds = EXCLUDED.rate_period_seconds, group_concurrency = EXCLUDED.group_concurrency,
    updated_at = now()
WHERE (t.concurrency, t.rate_limit, t.rate_period_seconds, t.group_concurrency)
      IS DISTINCT FROM (EXCLUDED.concurrency, EXCLUDED.rate_limit, EXCLUDED.rate_period_seconds,
                        EXCLUDED.group_concurrency);

-- name: sync_encrypted_tasks
-- A worker's start: which of its code's tasks are declared encrypt=True (`pgqueue enqueue` encrypts
-- them, pgqueue.enqueue() refuses them). A task declared without it loses its row, so removing
-- encrypt=True from the code removes it at the next deploy; a task this code does not declare keeps
-- its row. declared_at stays the first declaration's: a start that changes nothing writes nothing.
WITH declared AS (
    SELECT * FROM unnest(%(tasks)b::text[], %(encrypt)b::boolean[]) AS d(task, encrypt)
), removed AS (
    DELETE FROM pgqueue.encrypted_tasks AS e
    USING declared AS d
    WHERE e.task = d.task AND NOT d.encrypt
)
INSERT INTO pgqueue.encrypted_tasks (task)
SELECT task FROM declared WHERE encrypt
ON CONFLICT (task) DO NOTHING;

-- name: complete_jobs
-- Group commit: many finished jobs in one statement. The lease token fences out a worker whose
-- claim was rescued and re-run elsewhere; ids missing from the result lost their lease.
-- The batch statements below (complete, fail, release, progress) find each job by primary key.
-- The state they require ('running') comes from the MATERIALIZED batch, not a literal: with a
-- literal `j.state = 'running'` the planner may walk jobs_running_idx, which statistics taken
-- between bursts say is nearly empty, and join the batch against every running job of the fleet
-- (O(running x batch) per statement: 50 completions took 5.9 ms instead of 1.2 ms with 500 jobs
-- running on other workers). A value read from the batch cannot prove that index's predicate.
WITH done AS MATERIALIZED (
    SELECT d.*, 'running'::text AS running
    FROM unnest(%(ids)b::bigint[], %(tokens)b::uuid[], %(results)b::text[], %(results_encrypted)b::bytea[],
                %(progress)b::real[], %(progress_notes)b::text[], %(progress_notes_encrypted)b::bytea[])
        AS d(id, token, result, result_encrypted, progress, progress_note, progress_note_encrypted)
), updated AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'completed', finished_at = now(), result = d.result::jsonb, result_encrypted = d.result_encrypted,
        progress = COALESCE(d.progress, j.progress), progress_note = COALESCE(d.progress_note, j.progress_note),
        progress_note_encrypted = COALESCE(d.progress_note_encrypted, j.progress_note_encrypted)
    FROM done AS d
    WHERE j.id = d.id AND j.lease_token = d.token AND j.state = d.running
    RETURNING j.id, j.attempt, j.worker_id
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, worker_id)
    SELECT id, 'completed', 'running', 'completed', attempt, worker_id FROM updated
), woken AS (
    -- One wake-up per statement for pgqueue.admin.wait_for_job (waiters re-read their job by id),
    -- and none while nobody waits: waiters hold %(waiters_lock)s in shared mode, so the try below
    -- fails exactly when one does. When it succeeds, this transaction holds the lock until it
    -- commits and a waiter arriving meanwhile blocks on it, then reads the committed outcome: no
    -- wake-up is lost (see pgqueue/_db/notifications.py).
    SELECT pg_notify(%(done_channel)s, '') FROM (SELECT 1 FROM updated LIMIT 1) AS any_row
    WHERE NOT pg_try_advisory_xact_lock(%(waiters_lock)s)
), breaker_closed AS (
    -- A half-open circuit breaker's trial succeeded: the breaker closes, its failures forgotten.
    UPDATE pgqueue.circuit_breakers AS b
    SET state = 'closed', failures = 0, recent_failures = '{}', opened_at = NULL, trial_job_id = NULL,
        updated_at = now()
    FROM updated AS u
    WHERE b.state = 'half_open' AND b.trial_job_id = u.id
    RETURNING b.task, u.id AS job_id, u.worker_id
), breaker_audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, worker_id, detail)
    SELECT NULL, 'breaker_closed', 'half_open', 'closed', worker_id, jsonb_build_object('task', task, 'job_id', job_id)
    FROM breaker_closed
)
SELECT id, (SELECT count(*) FROM woken) AS notified FROM updated;

-- name: fail_jobs
-- A failed attempt: the worker decided the next state (scheduled/available for a retry, failed
-- when no attempts are left or the handler discarded it) and the event name. A 'snoozed' attempt
-- (pgqueue.Snooze) is not a failure: its attempt is handed back and the last error kept.
WITH failed AS MATERIALIZED (
    -- By primary key: see complete_jobs.
    SELECT f.*, 'running'::text AS running
    FROM unnest(%(ids)b::bigint[], %(tokens)b::uuid[], %(states)b::text[], %(delays)b::float8[],
                %(errors)b::text[], %(errors_encrypted)b::bytea[], %(events)b::text[])
        AS f(id, token, state, delay, error, error_encrypted, event)
), updated AS (
    UPDATE pgqueue.jobs AS j
    SET state = f.state,
        attempt = CASE WHEN f.event = 'snoozed' THEN GREATEST(j.attempt - 1, 0) ELSE j.attempt END,
        run_at = CASE WHEN f.state = 'failed' THEN j.run_at ELSE now() + make_interval(secs => f.delay) END,
        finished_at = CASE WHEN f.state = 'failed' THEN now() END,
        last_error = CASE WHEN f.event = 'snoozed' THEN j.last_error ELSE f.error::jsonb END,
        error_encrypted = CASE WHEN f.event = 'snoozed' THEN j.error_encrypted ELSE f.error_encrypted END
    FROM failed AS f
    WHERE j.id = f.id AND j.lease_token = f.token AND j.state = f.running
    RETURNING j.id, j.task, j.queue, j.state, j.attempt, j.worker_id, f.event, f.delay,
              j.last_error ->> 'type' AS error_type
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, worker_id, detail)
    SELECT id, event, 'running', state, attempt, worker_id,
           CASE WHEN event = 'snoozed' THEN jsonb_build_object('delay_s', delay)
                ELSE jsonb_build_object('error_type', error_type) END
    FROM updated
), breakers AS MATERIALIZED (
    -- Circuit breakers count every failed attempt (not snoozes) in this transaction, on the
    -- database clock. The rows are locked first: FOR UPDATE reads the newest committed version,
    -- so concurrent acks of the same task add up instead of overwriting each other.
    SELECT b.task, b.state AS from_state, u.job_id, u.worker_id,
           ARRAY(SELECT t FROM (SELECT unnest(b.recent_failures) AS t
                                UNION ALL SELECT now() FROM generate_series(1, u.n)) AS x
                 WHERE t > now() - make_interval(secs => b.window_seconds)
                 ORDER BY t DESC LIMIT b.failure_threshold) AS recent,
           b.failure_threshold
    FROM pgqueue.circuit_breakers AS b
    JOIN (SELECT task, count(*) AS n, max(id) AS job_id, max(worker_id) AS worker_id FROM updated
          WHERE event <> 'snoozed' GROUP BY task) AS u ON u.task = b.task
    ORDER BY b.task
    FOR NO KEY UPDATE OF b
), counted AS (
    -- Closed: open once `failures` attempts fell within the window. Half-open: any failure re-opens.
    SELECT task, from_state, job_id, worker_id, recent,
           CASE WHEN from_state = 'half_open' OR (from_state = 'closed' AND cardinality(recent) >= failure_threshold)
                THEN 'open' ELSE from_state END AS to_state
    FROM breakers
), tripped AS (
    UPDATE pgqueue.circuit_breakers AS b
    SET recent_failures = c.recent, failures = cardinality(c.recent), state = c.to_state,
        opened_at = CASE WHEN c.to_state = 'open' AND c.from_state <> 'open' THEN now() ELSE b.opened_at END,
        trial_job_id = CASE WHEN c.to_state = 'open' THEN NULL ELSE b.trial_job_id END,
        updated_at = now()
    FROM counted AS c
    WHERE b.task = c.task
), breaker_audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, worker_id, detail)
    SELECT NULL, 'breaker_opened', from_state, to_state, worker_id,
           jsonb_build_object('task', task, 'failures', cardinality(recent), 'job_id', job_id)
    FROM counted WHERE to_state <> from_state
), notified AS (
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM updated WHERE state = 'available') AS q
), woken AS (
    -- As in complete_jobs: only when someone waits.
    SELECT pg_notify(%(done_channel)s, '') FROM (SELECT 1 FROM updated WHERE state = 'failed' LIMIT 1) AS any_row
    WHERE NOT pg_try_advisory_xact_lock(%(waiters_lock)s)
)
SELECT id, (SELECT count(*) FROM notified) + (SELECT count(*) FROM woken) AS notified FROM updated;

-- name: release_jobs
-- Graceful shutdown hands unfinished jobs back at once. The interrupted attempt is not counted
-- (attempt is decremented) so a deploy never pushes a job towards the dead-letter state.
WITH batch AS MATERIALIZED (
    -- By primary key: see complete_jobs.
    SELECT r.*, 'running'::text AS running FROM unnest(%(ids)b::bigint[], %(tokens)b::uuid[]) AS r(id, token)
), released AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'available', attempt = GREATEST(j.attempt - 1, 0), run_at = now(), lease_token = NULL
    FROM batch AS r
    WHERE j.id = r.id AND j.lease_token = r.token AND j.state = r.running
    RETURNING j.id, j.queue, j.attempt, j.worker_id
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, worker_id, detail)
    SELECT id, 'released', 'running', 'available', attempt, worker_id,
           jsonb_build_object('reason', %(reason)s::text, 'counted_attempt', false)
    FROM released
), notified AS (
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM released) AS q
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
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM lost) AS q
)
SELECT id, (SELECT count(*) FROM notified) AS notified FROM lost;

-- name: update_progress
-- By primary key: see complete_jobs.
WITH batch AS MATERIALIZED (
    SELECT p.*, 'running'::text AS running
    FROM unnest(%(ids)b::bigint[], %(tokens)b::uuid[], %(progress)b::real[], %(notes)b::text[],
                %(notes_encrypted)b::bytea[])
        AS p(id, token, progress, note, note_encrypted)
)
-- A sealed job's note arrives only as note_encrypted (note NULL), a plain job's only as note.
UPDATE pgqueue.jobs AS j
SET progress = p.progress, progress_note = p.note, progress_note_encrypted = p.note_encrypted
FROM batch AS p
WHERE j.id = p.id AND j.lease_token = p.token AND j.state = p.running;

-- name: get_job
SELECT id, task, queue, state, priority, args, attempt, max_attempts, run_at, enqueued_at, started_at,
       finished_at, progress, progress_note, result, last_error, unique_key, tags, worker_id,
       args_encrypted IS NOT NULL AS args_encrypted, result_encrypted IS NOT NULL AS result_encrypted,
       error_encrypted IS NOT NULL AS error_encrypted, group_key,
       progress_note_encrypted IS NOT NULL AS progress_note_encrypted
FROM pgqueue.jobs WHERE id = %(id)s;


-- name: retry_jobs
-- Failed or cancelled jobs go back to available now. A job that used all its attempts gets one
-- more, so a manual retry always runs at least once.
-- The rows are locked first so the audit row can record the state each job left.
-- A job with a unique_key comes back only if no live job holds that key (a new job may have taken
-- it since) and only the newest of the dead jobs sharing a key: two live jobs of one key are what
-- jobs_unique_key_idx refuses, and its error would abort the whole statement and the caller's transaction.
-- Rows: each retried job (retried true), then each candidate left as it was for its key (false),
-- so that the caller can say which jobs did not come back, and why.
WITH candidates AS MATERIALIZED (
    SELECT id, state, unique_key FROM pgqueue.jobs AS j
    WHERE j.state IN ('failed', 'cancelled')
      AND (%(ids)b::bigint[] IS NULL OR j.id = ANY(%(ids)b::bigint[]))
      AND (%(only_failed)s::boolean IS FALSE OR j.state = 'failed')
      AND (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
    FOR NO KEY UPDATE
), before AS MATERIALIZED (
    SELECT id, state FROM (
        SELECT c.id, c.state, c.unique_key,
               row_number() OVER (PARTITION BY c.unique_key ORDER BY c.id DESC) AS newest
        FROM candidates AS c
        WHERE c.unique_key IS NOT NULL
    ) AS keyed
    WHERE keyed.newest = 1
      AND NOT EXISTS (SELECT 1 FROM pgqueue.jobs AS live
                      WHERE live.unique_key = keyed.unique_key
                        AND live.state IN ('scheduled', 'available', 'running'))
    UNION ALL
    SELECT id, state FROM candidates WHERE unique_key IS NULL
), retried AS (
    UPDATE pgqueue.jobs AS j
    -- A job still counting dependencies down (cancelled by its dependency policy) waits again.
    SET state = CASE WHEN j.pending_dependencies > 0 THEN 'waiting' ELSE 'available' END,
        run_at = now(), finished_at = NULL, lease_token = NULL,
        max_attempts = GREATEST(j.max_attempts, j.attempt + 1)
    FROM before
    WHERE j.id = before.id
    RETURNING j.id, j.queue, j.state, j.attempt, before.state AS from_state
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, actor, detail)
    SELECT id, 'retried', from_state, state, attempt, %(actor)s, NULLIF(jsonb_strip_nulls(jsonb_build_object('source', %(source)s::text)), '{}') FROM retried
), notified AS (
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM retried WHERE state = 'available') AS q
)
SELECT id, true AS retried, (SELECT count(*) FROM notified) AS notified FROM retried
UNION ALL
SELECT id, false, NULL FROM candidates WHERE id NOT IN (SELECT id FROM before);

-- name: cancel_stranded_dependents
-- After retry_jobs, in its transaction. Retrying a job makes the dependents its failure cancelled
-- wait again (the settle trigger of migration 0010), also one that still waits for another
-- dependency that was deleted since: that one could never run (a group's callback whose other
-- member was deleted). Its policy ('cancel'; 'run' resolved that edge already) ends it cancelled
-- again, with an audit row saying why, so nothing waits for ever. last_error is left as is: the
-- admin role may not write it (sql/roles.sql), and the audit row names the reason.
-- The retried jobs themselves are looked at too (retry_job and retry_workflow refuse such a job
-- first; this keeps every way of retrying to the same rule).
WITH RECURSIVE below(id) AS (
    SELECT unnest(%(ids)s::bigint[])
    UNION
    SELECT e.job_id FROM below JOIN pgqueue.job_dependencies AS e ON e.depends_on = below.id
), stranded AS MATERIALIZED (
    SELECT j.id FROM pgqueue.jobs AS j
    WHERE j.id IN (SELECT id FROM below) AND j.state = 'waiting'
      AND EXISTS (SELECT FROM pgqueue.job_dependencies AS e
                  WHERE e.job_id = j.id AND NOT e.resolved
                    AND NOT EXISTS (SELECT FROM pgqueue.jobs AS x WHERE x.id = e.depends_on))
    ORDER BY j.id
    FOR NO KEY UPDATE
), cancelled AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'cancelled', finished_at = now()
    FROM stranded
    WHERE j.id = stranded.id AND j.state = 'waiting'
    RETURNING j.id, j.attempt
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, actor, detail)
    SELECT c.id, 'cancelled', 'waiting', 'cancelled', c.attempt, %(actor)s,
           jsonb_strip_nulls(jsonb_build_object(
               'reason', 'dependency deleted', 'source', %(source)s::text,
               'dependencies', (SELECT jsonb_agg(e.depends_on ORDER BY e.depends_on)
                                FROM pgqueue.job_dependencies AS e
                                WHERE e.job_id = c.id AND NOT e.resolved
                                  AND NOT EXISTS (SELECT FROM pgqueue.jobs AS x WHERE x.id = e.depends_on))))
    FROM cancelled AS c
), woken AS (
    SELECT pg_notify(%(done_channel)s, '') FROM (SELECT 1 FROM cancelled LIMIT 1) AS any_row
)
SELECT id, (SELECT count(*) FROM woken) AS notified FROM cancelled;

-- name: cancel_job
-- A running job may be cancelled too: its worker is told on %(cancel_channel)s (payload
-- '<id>:<lease token>', so a late notification never hits a later attempt), and its heartbeat
-- finds it by polling if the NOTIFY is lost; its ack is refused (the lease token is cleared) and
-- the outcome stays cancelled.
WITH before AS (
    SELECT id, state, lease_token FROM pgqueue.jobs WHERE id = %(id)s FOR NO KEY UPDATE
), cancelled AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'cancelled', finished_at = now(), lease_token = NULL
    FROM before
    WHERE j.id = before.id AND before.state IN ('waiting', 'scheduled', 'available', 'running')
    RETURNING j.id, before.state AS from_state, j.attempt
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, actor, detail)
    SELECT id, 'cancelled', from_state, 'cancelled', attempt, %(actor)s, NULLIF(jsonb_strip_nulls(jsonb_build_object('source', %(source)s::text)), '{}') FROM cancelled
), woken AS (
    SELECT pg_notify(%(done_channel)s, '') FROM cancelled
), interrupted AS (
    SELECT pg_notify(%(cancel_channel)s, before.id || ':' || before.lease_token)
    FROM before JOIN cancelled ON cancelled.id = before.id
    WHERE before.state = 'running' AND before.lease_token IS NOT NULL
)
SELECT before.state AS previous_state, (SELECT count(*) FROM cancelled) AS cancelled,
       (SELECT count(*) FROM woken) + (SELECT count(*) FROM interrupted) AS notified FROM before;

-- name: delete_job
WITH deleted AS (
    DELETE FROM pgqueue.jobs WHERE id = %(id)s AND state <> 'running'
    RETURNING id, state, attempt
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, attempt, actor, detail)
    SELECT id, 'deleted', state, attempt, %(actor)s, NULLIF(jsonb_strip_nulls(jsonb_build_object('source', %(source)s::text)), '{}') FROM deleted
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
    SELECT id, 'purged', state, attempt, %(actor)s,
           jsonb_build_object('queue', %(queue)s::text) || jsonb_strip_nulls(jsonb_build_object('source', %(source)s::text))
    FROM purged
)
SELECT count(*) AS purged FROM purged;

-- name: find_pending_job
-- Work left for a worker serving the given queues (NULL: every queue): a job running anywhere, or one
-- claimable now or once staged (scheduled and due). Jobs scheduled in the future, jobs of
-- paused queues and jobs held by an open circuit breaker do not count: Worker.run_until_empty stops without them.
SELECT id FROM pgqueue.jobs AS j
WHERE (%(queues)b::text[] IS NULL OR j.queue = ANY(%(queues)b::text[]))
  AND (j.state = 'running'
       OR ((j.state = 'available' OR (j.state = 'scheduled' AND j.run_at <= now()))
           AND NOT EXISTS (SELECT 1 FROM pgqueue.queues AS q WHERE q.name = j.queue AND q.paused)
           AND j.task NOT IN (SELECT b.task FROM pgqueue.circuit_breakers AS b WHERE b.state <> 'closed')))
LIMIT 1;

-- name: list_jobs_page
-- One page of jobs, newest first, below the cursor %(before)s. `candidates` walks at most
-- %(budget)s rows down an index: the primary key, or the state's own partial index when
-- %(indexed_state)s names a state that has one (waiting, scheduled, available, running, failed, cancelled).
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
       j.group_key, j.progress_note_encrypted IS NOT NULL AS progress_note_encrypted,
       scan.scanned, scan.lowest_id, scan.newest_enqueued_at
FROM scan
LEFT JOIN (matched JOIN pgqueue.jobs AS j ON j.id = matched.id) ON true
ORDER BY j.id DESC NULLS LAST;

-- name: get_job_state
SELECT state FROM pgqueue.jobs WHERE id = %(id)s;

-- name: find_cancelled_jobs
-- The heartbeat's fallback for a lost cancel NOTIFY (no LISTEN behind a transaction pooler): which
-- of the jobs this worker runs were cancelled. Primary-key lookups of a handful of ids.
SELECT id FROM pgqueue.jobs WHERE id = ANY(%(ids)s::bigint[]) AND state = 'cancelled';

-- name: outcomes_already_written
-- An ack whose commit landed but whose reply was lost (the connection broke after COMMIT) is sent
-- again and then matches nothing: the job is no longer running. It is done, not a lost lease, when
-- the job holds that very outcome under the same lease token: a rescue clears the token, a new
-- claim replaces it, and a cancel ends in a state no outcome writes.
SELECT j.id
FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[], %(states)s::text[]) AS o(id, token, state)
JOIN pgqueue.jobs AS j ON j.id = o.id
WHERE j.lease_token = o.token AND j.state = o.state;

-- name: lock_dependencies
-- The jobs a new job will depend on, locked in id order until the caller's transaction ends and
-- marked has_dependents (pgqueue.lock_dependencies, a security-definer function: an enqueuer
-- cannot UPDATE jobs). Under the lock a dependency cannot finish before the new edges commit;
-- once they have, its completion's trigger sees them.
SELECT id, state, workflow_id FROM pgqueue.lock_dependencies(%(ids)b::bigint[]);

-- name: insert_dependent_jobs
-- Jobs with dependencies (depends_on, chains, groups), their edges and audit rows in one
-- statement; ids were drawn up front (reserve_job_ids) so edges can name jobs of the same batch.
-- A job with unresolved dependencies starts 'waiting'; the triggers of migration 0010 release it.
WITH input AS (
    SELECT
        i.id, i.ord, i.task, i.queue, i.priority, i.args::jsonb AS args, i.args_encrypted, i.max_attempts,
        COALESCE(i.run_at, now() + make_interval(secs => i.delay)) AS run_at,
        CASE WHEN i.tags IS NULL THEN '{}'::text[]
             ELSE ARRAY(SELECT jsonb_array_elements_text(i.tags::jsonb)) END AS tags,
        i.pending, i.has_dependents, i.policy, i.workflow_id, i.group_key
    FROM unnest(
        %(ids)b::bigint[], %(tasks)b::text[], %(queues)b::text[], %(priorities)b::int[], %(args)b::text[],
        %(args_encrypted)b::bytea[], %(max_attempts)b::int[], %(run_ats)b::timestamptz[], %(delays)b::float8[],
        %(tags)b::text[], %(pending)b::int[], %(has_dependents)b::boolean[], %(policies)b::text[],
        %(workflow_ids)b::uuid[], %(group_keys)b::text[]
    ) WITH ORDINALITY AS i(id, task, queue, priority, args, args_encrypted, max_attempts, run_at, delay, tags, pending,
                           has_dependents, policy, workflow_id, group_key, ord)
), inserted AS (
    INSERT INTO pgqueue.jobs (id, task, queue, state, priority, args, args_encrypted, max_attempts, run_at, tags,
                              pending_dependencies, has_dependents, on_dependency_failure, workflow_id, group_key)
    SELECT id, task, queue,
           CASE WHEN pending > 0 THEN 'waiting' WHEN run_at > now() THEN 'scheduled' ELSE 'available' END,
           priority, args, args_encrypted, max_attempts, run_at, tags, pending, has_dependents, policy, workflow_id,
           group_key
    FROM input
    ORDER BY ord
    RETURNING id, queue, state, attempt
), edges AS (
    INSERT INTO pgqueue.job_dependencies (job_id, depends_on, resolved)
    SELECT e.job_id, e.depends_on, e.resolved
    FROM unnest(%(edge_jobs)b::bigint[], %(edge_dependencies)b::bigint[], %(edge_resolved)b::boolean[])
        AS e(job_id, depends_on, resolved)
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, to_state, attempt, actor)
    SELECT id, 'enqueued', state, attempt, %(actor)s FROM inserted
), notified AS (
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM inserted WHERE state = 'available') AS q
)
SELECT id, (SELECT count(*) FROM notified) AS notified FROM inserted;

-- name: copy_workflow_jobs
-- The COPY path of a large workflow: its jobs without dependencies that are available at once
-- (a group's members). Audit rows and NOTIFY as for copy_jobs; the dependents follow in
-- insert_dependent_jobs, in the same savepoint or transaction.
COPY pgqueue.jobs (id, task, queue, priority, args, args_encrypted, max_attempts, tags, group_key, has_dependents,
                  workflow_id)
FROM STDIN;

-- name: dependency_results
-- What a handler's job.dependency_results() reads: its dependencies in id order, with results.
SELECT j.id, j.task, j.state, j.result, j.result_encrypted
FROM pgqueue.job_dependencies AS e
JOIN pgqueue.jobs AS j ON j.id = e.depends_on
WHERE e.job_id = %(id)s
ORDER BY j.id;
