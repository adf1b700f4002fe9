"""The benchmark's own SQL: probes that read counts and sizes, setup shortcuts, and the ceiling.

It lives apart from ``pgqueue/_db/queries/`` on purpose. The product never runs it, and the
ceiling (``PHYSICAL_*``) must not share a line with pgqueue's queries, or it would measure them.
"""

from __future__ import annotations

from typing import Final, LiteralString

# --- probes on pgqueue's tables ---

COUNT_COMPLETED: Final[LiteralString] = "SELECT count(*) FROM pgqueue.jobs WHERE state = 'completed'"
COUNT_AVAILABLE: Final[LiteralString] = "SELECT count(*) FROM pgqueue.jobs WHERE state = 'available'"
# When the n-th job finished (database clock), for a throughput measured in the database.
NTH_FINISHED_AT: Final[LiteralString] = """
SELECT finished_at FROM pgqueue.jobs WHERE state = 'completed'
ORDER BY finished_at OFFSET %(n)s - 1 LIMIT 1
"""
CLOCK: Final[LiteralString] = "SELECT clock_timestamp()"
LIVE_WORKERS: Final[LiteralString] = "SELECT count(*) FROM pgqueue.workers WHERE lease_expires_at > now()"

# A backlog of a million jobs through enqueue_many would take longer than the measurement: the
# rows are generated server-side instead, with the same columns enqueue_many would write.
FILL_BACKLOG: Final[LiteralString] = """
INSERT INTO pgqueue.jobs (task, queue, state, args)
SELECT %(task)s, %(queue)s, 'available', jsonb_build_object('i', g)
FROM generate_series(1, %(count)s) AS g
"""
ANALYZE_JOBS: Final[LiteralString] = "VACUUM ANALYZE pgqueue.jobs"

# Jobs not finished yet: the churn scenario counts what left the queue, pruned or not.
COUNT_UNFINISHED: Final[LiteralString] = (
    "SELECT count(*) FROM pgqueue.jobs WHERE state IN ('scheduled', 'available', 'running')"
)
VACUUM_COUNT: Final[LiteralString] = (
    "SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'pgqueue.jobs'::regclass"
)
RELATION_SIZES: Final[LiteralString] = """
SELECT pg_relation_size(%(table)s::regclass) AS heap_bytes,
       (SELECT COALESCE(sum(pg_relation_size(indexrelid)), 0) FROM pg_index
        WHERE indrelid = %(table)s::regclass) AS index_bytes
"""
AUTOVACUUM: Final[LiteralString] = "SELECT current_setting('autovacuum')"
TABLE_SIZE: Final[LiteralString] = """
SELECT pg_total_relation_size(c.oid) AS total_bytes,
       COALESCE(s.n_live_tup, 0) AS live_estimate,
       COALESCE(s.n_dead_tup, 0) AS dead_tuples
FROM pg_class AS c
LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
WHERE c.oid = %(table)s::regclass
"""
COUNT_JOBS: Final[LiteralString] = "SELECT count(*) FROM pgqueue.jobs"
JOBS_RELOPTIONS: Final[LiteralString] = (
    "SELECT COALESCE(reloptions, '{}') FROM pg_class WHERE oid = 'pgqueue.jobs'::regclass"
)
# The same live rows, freshly loaded into a table with the same columns, indexes and storage.
FRESH_TABLE: Final[LiteralString] = "pgqueue_bench_fresh"
CREATE_FRESH: Final[LiteralString] = "CREATE TABLE public.pgqueue_bench_fresh (LIKE pgqueue.jobs INCLUDING ALL)"
LOAD_FRESH: Final[LiteralString] = "INSERT INTO public.pgqueue_bench_fresh SELECT * FROM pgqueue.jobs"
DROP_FRESH: Final[LiteralString] = "DROP TABLE public.pgqueue_bench_fresh"

# --- the server ---

SERVER_SETTINGS: Final[LiteralString] = """
SELECT name, current_setting(name) FROM unnest(ARRAY[
    'server_version', 'shared_buffers', 'synchronous_commit', 'fsync', 'max_connections',
    'work_mem', 'autovacuum'
]) AS name
"""

# --- the ceiling: the least SQL any queue must run per job, on a table with nothing else ---

PHYSICAL_DDL: Final[LiteralString] = """
CREATE TABLE public.ceiling_jobs (
    id bigserial PRIMARY KEY,
    state text NOT NULL,
    args jsonb,
    run_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ceiling_jobs_claim_idx ON public.ceiling_jobs (run_at, id) WHERE state = 'available'
"""
PHYSICAL_INSERT: Final[LiteralString] = "INSERT INTO public.ceiling_jobs (state, args) VALUES ('available', %s)"
PHYSICAL_COPY: Final[LiteralString] = "COPY public.ceiling_jobs (state, args) FROM STDIN"
PHYSICAL_VACUUM: Final[LiteralString] = "VACUUM ANALYZE public.ceiling_jobs"
PHYSICAL_CLAIM_ONE: Final[LiteralString] = """
UPDATE public.ceiling_jobs SET state = 'running'
WHERE id = (SELECT id FROM public.ceiling_jobs WHERE state = 'available'
            ORDER BY run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id
"""
PHYSICAL_CLAIM_MANY: Final[LiteralString] = """
UPDATE public.ceiling_jobs SET state = 'running'
WHERE id = ANY (ARRAY(SELECT id FROM public.ceiling_jobs WHERE state = 'available'
                      ORDER BY run_at, id LIMIT %s FOR UPDATE SKIP LOCKED))
RETURNING id
"""
PHYSICAL_COMPLETE_ONE: Final[LiteralString] = "UPDATE public.ceiling_jobs SET state = 'completed' WHERE id = %s"
PHYSICAL_COMPLETE_MANY: Final[LiteralString] = (
    "UPDATE public.ceiling_jobs SET state = 'completed' WHERE id = ANY(%s)"
)
