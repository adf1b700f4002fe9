-- The worker fleet: the registry (heartbeats, leases), the leader lease, and what the
-- maintenance leader does for the fleet: stage due scheduled jobs, rescue the jobs of dead
-- workers, forget workers long dead. Times always come from the database clock.

-- name: heartbeat_worker
-- Registers the worker on first call and renews its lease afterwards; re-creates the row if the
-- rescuer already removed it (the worker was paused past its lease and came back).
INSERT INTO pgqueue.workers (id, hostname, pid, queues, concurrency, lease_expires_at)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(queues)s, %(concurrency)s,
        now() + make_interval(secs => %(lease_seconds)s::float8))
ON CONFLICT (id) DO UPDATE
SET heartbeat_at = now(), lease_expires_at = EXCLUDED.lease_expires_at
RETURNING id;

-- name: deregister_worker
DELETE FROM pgqueue.workers WHERE id = %(id)s;

-- name: delete_expired_workers
-- Rows of workers dead for a while; kept a little past expiry so operators can see who died.
DELETE FROM pgqueue.workers
WHERE lease_expires_at < now() - make_interval(secs => %(keep_seconds)s::float8);

-- name: list_workers
SELECT id, hostname, pid, queues, concurrency, started_at, heartbeat_at, lease_expires_at,
       lease_expires_at > now() AS alive
FROM pgqueue.workers
ORDER BY started_at;

-- name: acquire_leadership
-- Take or renew a leader lease: succeeds when nobody holds it, it expired, or we hold it already.
INSERT INTO pgqueue.leaders (name, holder, expires_at)
VALUES (%(name)s, %(holder)s, now() + make_interval(secs => %(ttl_seconds)s::float8))
ON CONFLICT (name) DO UPDATE
SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
WHERE pgqueue.leaders.holder = EXCLUDED.holder OR pgqueue.leaders.expires_at < now()
RETURNING holder;

-- name: resign_leadership
DELETE FROM pgqueue.leaders WHERE name = %(name)s AND holder = %(holder)s;

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
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM staged) AS q
)
SELECT count(*) AS staged, (SELECT count(*) FROM notified) AS notified FROM staged;

-- name: rescue_jobs
-- Running jobs whose worker stopped heartbeating go back to available, or to failed when they
-- have no attempts left. The lease token is cleared, so the lost worker's late ack is refused.
-- A lease also holds for its full length after the server (re)started, was promoted, or the
-- rescuer's own session came back from an outage: while the database was unreachable no worker
-- could heartbeat, and rescuing then would re-run jobs whose live workers were only reconnecting.
-- pg_postmaster_start_time() alone missed a promotion: a standby that ran for weeks keeps its
-- start time. pg_last_xact_replay_timestamp() (NULL on a server that never replayed) is the last
-- commit it replayed, i.e. about when the old primary stopped; %(recovered_at)s is the server's
-- clock when the leader's session reconnected after an outage (NULL: no outage seen), which also
-- covers a failover slower than a lease. GREATEST ignores NULLs.
WITH orphaned AS MATERIALIZED (
    SELECT j.id FROM pgqueue.jobs AS j
    WHERE j.state = 'running'
      AND NOT EXISTS (
          SELECT 1 FROM pgqueue.workers AS w
          WHERE w.id = j.worker_id
            AND (w.lease_expires_at > now()
                 OR GREATEST(pg_postmaster_start_time(), pg_last_xact_replay_timestamp(),
                             %(recovered_at)s::timestamptz) + (w.lease_expires_at - w.heartbeat_at) > now())
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
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM rescued WHERE state = 'available') AS q
), woken AS (
    SELECT pg_notify(%(done_channel)s, '') FROM (SELECT 1 FROM rescued WHERE state = 'failed' LIMIT 1) AS any_row
)
SELECT id, state, (SELECT count(*) FROM notified) + (SELECT count(*) FROM woken) AS notified FROM rescued;

-- name: count_live_workers
SELECT count(*) FILTER (WHERE lease_expires_at > now()) AS alive, count(*) AS registered FROM pgqueue.workers;
