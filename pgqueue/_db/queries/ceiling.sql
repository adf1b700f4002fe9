-- PostgreSQL's ceiling on this machine (pgqueue bench --scenario physical): the least SQL any
-- queue must run per job, on a bare table with nothing else. It shares no line with pgqueue's own
-- queries, or it would measure them.

-- name: create_table
CREATE TABLE public.ceiling_jobs (
    id bigserial PRIMARY KEY,
    state text NOT NULL,
    args jsonb,
    run_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ceiling_jobs_claim_idx ON public.ceiling_jobs (run_at, id) WHERE state = 'available';

-- name: insert_job
INSERT INTO public.ceiling_jobs (state, args) VALUES ('available', %(args)s);

-- name: copy_jobs
COPY public.ceiling_jobs (state, args) FROM STDIN;

-- name: vacuum_table
VACUUM ANALYZE public.ceiling_jobs;

-- name: claim_job
UPDATE public.ceiling_jobs SET state = 'running'
WHERE id = (SELECT id FROM public.ceiling_jobs WHERE state = 'available'
            ORDER BY run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id;

-- name: claim_jobs
UPDATE public.ceiling_jobs SET state = 'running'
WHERE id = ANY (ARRAY(SELECT id FROM public.ceiling_jobs WHERE state = 'available'
                      ORDER BY run_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED))
RETURNING id;

-- name: complete_job
UPDATE public.ceiling_jobs SET state = 'completed' WHERE id = %(id)s;

-- name: complete_jobs
UPDATE public.ceiling_jobs SET state = 'completed' WHERE id = ANY(%(ids)s);
