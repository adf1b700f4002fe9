-- Queries on pgqueue.schedules and pgqueue.schedule_runs.
-- Every administrative change (add, update, remove, pause, resume, sync) writes its
-- pgqueue.job_events row (job_id NULL) in the same statement, so the audit trail commits or rolls
-- back with the change. Audit details name the schedule and the fields changed, never the args.
-- Time always comes from the database (now()): a scheduler host with a wrong clock changes nothing.

-- name: lock_for_sync
-- SHARE UPDATE EXCLUSIVE conflicts with itself, so schedulers that start together sync one after
-- the other, but not with row writes: passes and admin commands go on during a sync. (A mode
-- that blocked their writes could deadlock with a sync waiting for a row a pass holds.)
LOCK TABLE pgqueue.schedules IN SHARE UPDATE EXCLUSIVE MODE;

-- name: list_schedules
SELECT name, cron, timezone, task, queue, args, priority, paused, misfire, max_catchup, source,
       disabled_at, next_run_at, last_run_at, created_at, updated_at
FROM pgqueue.schedules
ORDER BY name;

-- name: get_schedule
SELECT name, cron, timezone, task, queue, args, priority, paused, misfire, max_catchup, source,
       disabled_at, next_run_at, last_run_at, created_at, updated_at
FROM pgqueue.schedules
WHERE name = %(name)s;

-- name: get_schedule_for_update
SELECT name, cron, timezone, task, queue, args, priority, paused, misfire, max_catchup, source,
       disabled_at, next_run_at, last_run_at, created_at, updated_at
FROM pgqueue.schedules
WHERE name = %(name)s
FOR UPDATE;

-- name: insert_schedule
WITH inserted AS (
    INSERT INTO pgqueue.schedules (name, cron, timezone, task, queue, args, priority, misfire, max_catchup,
                                   source, next_run_at)
    VALUES (%(name)s, %(cron)s, %(timezone)s, %(task)s, %(queue)s, %(args)s::jsonb, %(priority)s,
            %(misfire)s, %(max_catchup)s, %(source)s, %(next_run_at)s)
    ON CONFLICT (name) DO NOTHING
    RETURNING name, cron, timezone, task, queue, source
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, actor, detail)
    SELECT NULL, 'schedule_added', %(actor)s,
           jsonb_build_object('schedule', name, 'source', source, 'cron', cron, 'timezone', timezone,
                              'task', task, 'queue', queue)
    FROM inserted
)
SELECT name FROM inserted;

-- name: update_schedule
-- A runtime --replace, or a sync of a changed (or re-enabled) code schedule. The WHERE on source
-- keeps a sync from ever touching a runtime row and a replace from touching a code row.
WITH updated AS (
    UPDATE pgqueue.schedules
    SET cron = %(cron)s, timezone = %(timezone)s, task = %(task)s, queue = %(queue)s, args = %(args)s::jsonb,
        priority = %(priority)s, misfire = %(misfire)s, max_catchup = %(max_catchup)s,
        -- Keeping next_run_at reads the row as it is now, not as the sync read it: a pass may
        -- have advanced it in between.
        next_run_at = CASE WHEN %(keep_next_run_at)s THEN next_run_at ELSE %(next_run_at)s END,
        disabled_at = NULL, updated_at = now()
    WHERE name = %(name)s AND source = %(source)s
    RETURNING name, cron, timezone, source
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, actor, detail)
    SELECT NULL, %(event)s, %(actor)s,
           jsonb_build_object('schedule', name, 'source', source, 'cron', cron, 'timezone', timezone,
                              'changed', %(changed)s::jsonb)
    FROM updated
)
SELECT name FROM updated;

-- name: delete_schedule
-- schedule_runs rows are kept: they are the record that a fire time was inserted, and a schedule
-- re-added under the same name must not insert those fire times again.
WITH deleted AS (
    DELETE FROM pgqueue.schedules WHERE name = %(name)s
    RETURNING name, source
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, actor, detail)
    SELECT NULL, 'schedule_removed', %(actor)s, jsonb_build_object('schedule', name, 'source', source)
    FROM deleted
)
SELECT name FROM deleted;

-- name: set_schedule_paused
WITH changed AS (
    UPDATE pgqueue.schedules
    SET paused = %(paused)s, next_run_at = %(next_run_at)s, updated_at = now()
    WHERE name = %(name)s AND paused <> %(paused)s
    RETURNING name, paused
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, actor, detail)
    SELECT NULL, CASE WHEN paused THEN 'schedule_paused' ELSE 'schedule_resumed' END, %(actor)s,
           jsonb_build_object('schedule', name)
    FROM changed
)
SELECT name FROM changed;

-- name: disable_code_schedules
-- A code schedule that is no longer in the code stops firing but stays visible; the sync enables
-- it again if it comes back.
WITH disabled AS (
    UPDATE pgqueue.schedules
    SET disabled_at = now(), next_run_at = NULL, updated_at = now()
    WHERE source = 'code' AND disabled_at IS NULL AND name <> ALL(%(keep)s::text[])
    RETURNING name
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, actor, detail)
    SELECT NULL, 'schedule_disabled', %(actor)s,
           jsonb_build_object('schedule', name, 'reason', 'no longer defined in code')
    FROM disabled
)
SELECT name FROM disabled;

-- name: lock_due_schedules
-- SKIP LOCKED: concurrent schedulers share the due schedules out instead of queueing behind each
-- other. The one holding a schedule's row inserts its runs and advances next_run_at before the
-- lock is released, and a scheduler that reads the row afterwards no longer finds it due.
SELECT name, cron, timezone, task, queue, args, priority, paused, misfire, max_catchup, source,
       disabled_at, next_run_at, last_run_at, created_at, updated_at
FROM pgqueue.schedules
WHERE NOT paused AND disabled_at IS NULL AND (next_run_at IS NULL OR next_run_at <= now())
ORDER BY next_run_at NULLS FIRST, name
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: insert_scheduled_jobs
-- The exactly-once guard: schedule_runs' primary key admits each (schedule, fire time) once,
-- ever, and only fire times whose row is new get a job. The row outlives the job, so pruning the
-- job cannot let a later pass insert that fire time again. Job ids are drawn up front so the run
-- row can point at its job in the same statement. The audit row and NOTIFY follow jobs.sql.
WITH input AS (
    SELECT nextval('pgqueue.jobs_id_seq') AS job_id, f.fire_time, f.catch_up
    FROM unnest(%(fire_times)s::timestamptz[], %(catch_up)s::boolean[]) AS f(fire_time, catch_up)
), runs AS (
    INSERT INTO pgqueue.schedule_runs (schedule_name, fire_time, job_id)
    SELECT %(schedule)s, fire_time, job_id FROM input
    ON CONFLICT (schedule_name, fire_time) DO NOTHING
    RETURNING fire_time, job_id
), inserted AS (
    INSERT INTO pgqueue.jobs (id, task, queue, state, priority, args, args_encrypted, max_attempts, run_at, tags)
    SELECT runs.job_id, %(task)s, %(queue)s, CASE WHEN runs.fire_time > now() THEN 'scheduled' ELSE 'available' END,
           %(priority)s, %(args)s::jsonb, %(args_encrypted)s::bytea, %(max_attempts)s, runs.fire_time, %(tags)s::text[]
    FROM runs
    RETURNING id, queue, state, attempt, run_at
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, to_state, attempt, actor, detail)
    SELECT i.id, 'enqueued', i.state, i.attempt, %(actor)s,
           jsonb_build_object('schedule', %(schedule)s::text, 'fire_time', i.run_at, 'catch_up', input.catch_up)
    FROM inserted AS i JOIN input ON input.job_id = i.id
), notified AS (
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM inserted WHERE state = 'available') AS q
)
SELECT id, run_at AS fire_time, (SELECT count(*) FROM notified) AS notified FROM inserted ORDER BY run_at;

-- name: record_misfire
-- Runs the misfire policy dropped are not silent: the audit trail says which window was missed.
INSERT INTO pgqueue.job_events (job_id, event, actor, detail)
VALUES (NULL, 'schedule_misfired', %(actor)s,
        jsonb_build_object('schedule', %(schedule)s::text, 'policy', %(policy)s::text,
                           'missed', %(missed)s::int, 'missed_truncated', %(missed_truncated)s::boolean,
                           'inserted', %(inserted)s::int, 'dropped', %(dropped)s::int,
                           'first_missed', %(first_missed)s::timestamptz,
                           'last_missed', %(last_missed)s::timestamptz));

-- name: advance_schedule
UPDATE pgqueue.schedules
SET next_run_at = %(next_run_at)s,
    last_run_at = GREATEST(last_run_at, %(last_run_at)s::timestamptz)
WHERE name = %(name)s;

-- name: next_wakeup
-- clock_timestamp(), not now(): the scheduler sleeps until the next run from the moment it asks.
SELECT clock_timestamp() AS now, min(next_run_at) AS next_run_at
FROM pgqueue.schedules
WHERE NOT paused AND disabled_at IS NULL AND name <> ALL(%(exclude)s::text[]);
