-- Worker registry and leader leases. Times always come from the database clock.

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

-- name: connection_limits
-- What caps the sessions of this login on this database: its role's and the database's
-- CONNECTION LIMIT (-1: none). Superusers are exempt from both.
SELECT r.rolname, r.rolsuper, r.rolconnlimit, d.datconnlimit
FROM pg_catalog.pg_roles AS r, pg_catalog.pg_database AS d
WHERE r.rolname = current_user AND d.datname = current_database();

-- name: idle_session_timeout
-- Seconds after which the server ends a session idle outside a transaction (0: never). A role or
-- database may set it to reap idle pooled connections; the worker's LISTEN session probes within
-- it, since a listener that is dropped again and again also drops the notifications sent meanwhile.
SELECT COALESCE(extract(epoch FROM current_setting('idle_session_timeout', true)::interval), 0)::float8;
