-- The server, not pgqueue's tables: diagnostics (notification queue, read-only state, long
-- transactions), what limits a worker's sessions, and the session itself (pid, probe, clock).

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

-- name: backend_pid
-- Compared with the pid in the session's BackendKeyData: PostgreSQL sends the backend's own, a
-- pooler (PgBouncer, in any pool mode) a key of its own, as the client's backend varies.
SELECT pg_backend_pid();

-- name: ping_server
-- A quiet session may be a dead one: the cheapest statement that needs an answer.
SELECT 1;

-- name: read_clock
-- The database's clock: every decision about time (due runs, leases, retention) uses it.
SELECT now();

-- name: schema_revision
SELECT version_num FROM pgqueue_alembic_version;

-- name: skip_commit_flush_wait
-- For the worker's claim session only: its commits return without waiting for the WAL flush.
-- Safe for claims: a claim lost in a server crash leaves the job as it was before (available,
-- attempt not counted), which is what at-least-once delivery already allows after a crash, and
-- the worker's next outcome (a synchronous commit) flushes the WAL past every earlier claim, so a
-- job whose outcome was written never loses its claim. See docs/design.md.
SET synchronous_commit TO off;

-- name: set_transaction_settings
-- Custom settings for this transaction only (the reports' window and bucket: current_setting in
-- sql/reports/*.sql).
SELECT set_config(name, value, true) FROM unnest(%(names)s::text[], %(values)s::text[]) AS s(name, value);

-- name: join_job_waiters
-- pgqueue.admin.wait_for_job: a waiting session holds this shared advisory lock (a fixed key) so
-- that the statements finishing jobs notify only while someone waits (see
-- pgqueue/_db/notifications.py). lock_timeout bounds the wait for it by the caller's timeout
-- (milliseconds; a statement that finished jobs holds it exclusively until its commit).
SELECT set_config('lock_timeout', %(lock_timeout_ms)s::text, false), pg_advisory_lock_shared(%(key)s);
