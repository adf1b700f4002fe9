-- The benchmark's own probes and setup shortcuts on pgqueue's tables (pgqueue bench). The product
-- never runs these; the bench reads what pgqueue wrote with them, never through pgqueue's stores.

-- name: count_completed
SELECT count(*) FROM pgqueue.jobs WHERE state = 'completed';

-- name: count_available
SELECT count(*) FROM pgqueue.jobs WHERE state = 'available';

-- name: count_running
SELECT count(*) FROM pgqueue.jobs WHERE state = 'running';

-- name: count_encrypted_completed
-- The guarantees scenario's check that its encrypted jobs were stored and run as ciphertext.
SELECT count(*) FROM pgqueue.jobs WHERE state = 'completed' AND args IS NULL AND args_encrypted IS NOT NULL;

-- name: count_unfinished
-- Jobs not finished yet: the churn scenario counts what left the queue, pruned or not.
SELECT count(*) FROM pgqueue.jobs WHERE state IN ('scheduled', 'available', 'running');

-- name: count_jobs
SELECT count(*) FROM pgqueue.jobs;

-- name: nth_finished_at
-- When the n-th job finished (database clock), for a throughput measured in the database.
SELECT finished_at FROM pgqueue.jobs WHERE state = 'completed'
ORDER BY finished_at OFFSET %(n)s - 1 LIMIT 1;

-- name: clock
SELECT clock_timestamp();

-- name: live_workers
SELECT count(*) FROM pgqueue.workers WHERE lease_expires_at > now();

-- name: fill_backlog
-- A backlog of a million jobs through enqueue_many would take longer than the measurement: the
-- rows are generated server-side instead, with the same columns enqueue_many would write.
INSERT INTO pgqueue.jobs (task, queue, state, args)
SELECT %(task)s, %(queue)s, 'available', jsonb_build_object('i', g)
FROM generate_series(1, %(count)s) AS g;

-- name: analyze_jobs
VACUUM ANALYZE pgqueue.jobs;

-- name: vacuum_count
SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'pgqueue.jobs'::regclass;

-- name: autovacuum
SELECT current_setting('autovacuum');

-- name: relation_sizes
SELECT pg_relation_size(%(table)s::regclass) AS heap_bytes,
       (SELECT COALESCE(sum(pg_relation_size(indexrelid)), 0) FROM pg_index
        WHERE indrelid = %(table)s::regclass) AS index_bytes;

-- name: table_size
SELECT pg_total_relation_size(c.oid) AS total_bytes,
       COALESCE(s.n_live_tup, 0) AS live_estimate,
       COALESCE(s.n_dead_tup, 0) AS dead_tuples
FROM pg_class AS c
LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
WHERE c.oid = %(table)s::regclass;

-- name: jobs_reloptions
SELECT COALESCE(reloptions, '{}') FROM pg_class WHERE oid = 'pgqueue.jobs'::regclass;

-- name: create_fresh
-- The same live rows, freshly loaded into a table with the same columns, indexes and storage.
CREATE TABLE public.pgqueue_bench_fresh (LIKE pgqueue.jobs INCLUDING ALL);

-- name: load_fresh
INSERT INTO public.pgqueue_bench_fresh SELECT * FROM pgqueue.jobs;

-- name: drop_fresh
DROP TABLE public.pgqueue_bench_fresh;

-- name: server_settings
SELECT name, current_setting(name) FROM unnest(ARRAY[
    'server_version', 'shared_buffers', 'synchronous_commit', 'fsync', 'max_connections',
    'work_mem', 'autovacuum'
]) AS name;

-- name: enqueue_via_sql
-- The SQL enqueue function (migration 0009), as a trigger or psql would call it.
SELECT pgqueue.enqueue(%(task)s, %(args)s::jsonb, queue => %(queue)s);

-- name: finished_epochs
-- When each of the given jobs finished (database clock, seconds since the epoch): the workflow
-- scenario's "commit of step n" (the ack statement's now(), a moment before its commit).
SELECT id, extract(epoch FROM finished_at)::float8 FROM pgqueue.jobs WHERE id = ANY(%(ids)s::bigint[]);
