"""pgqueue.enqueue(): enqueue from SQL (triggers, psql, other languages) in the caller's transaction.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04

The function does what ``App.enqueue`` does for a plaintext job: the same validation (queue name,
priority range, max_attempts, tags, args a JSON object under the default 1 MiB limit, unique_key
not empty), the same row, the same ``enqueued`` audit row and the same NOTIFY on the
``pgqueue_jobs`` channel (``pgqueue._db.notifications.NOTIFY_CHANNEL``) when the job is available
at once. A live job holding ``unique_key`` makes it return that job's id and write nothing.

SECURITY INVOKER (the default): the caller's own privileges and the row-level security policies
of ``sql/roles.sql`` apply exactly as for an enqueue from Python. EXECUTE is revoked from PUBLIC;
``sql/roles.sql`` grants it to the enqueuer, worker and admin roles. The audit row's actor is the
calling role (``current_user``).

Encryption needs the application's keys, which the database never sees: encrypted jobs must be
enqueued from Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from textwrap import dedent

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = "text, jsonb, text, integer, timestamp with time zone, text, text[], integer"

ENQUEUE = """
CREATE FUNCTION pgqueue.enqueue(
    task text,
    args jsonb,
    queue text DEFAULT 'default',
    priority integer DEFAULT 100,
    run_at timestamptz DEFAULT now(),
    unique_key text DEFAULT NULL,
    tags text[] DEFAULT '{}',
    max_attempts integer DEFAULT 20
) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    -- NULL takes the default, as None does in App.enqueue.
    job_args     jsonb := COALESCE(enqueue.args, '{}');
    job_queue    text := COALESCE(enqueue.queue, 'default');
    job_priority integer := COALESCE(enqueue.priority, 100);
    job_run_at   timestamptz := COALESCE(enqueue.run_at, now());
    job_tags     text[] := COALESCE(enqueue.tags, '{}');
    job_attempts integer := COALESCE(enqueue.max_attempts, 20);
    job_state    text;
    new_id       bigint;
    args_size    integer;
    tag          text;
BEGIN
    IF enqueue.task IS NULL OR enqueue.task = '' OR length(enqueue.task) > 255 THEN
        RAISE EXCEPTION 'pgqueue.enqueue: task name % must be 1-255 characters', quote_nullable(enqueue.task)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_typeof(job_args) <> 'object' THEN
        RAISE EXCEPTION 'pgqueue.enqueue: args must be a JSON object, not a JSON %', jsonb_typeof(job_args)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    args_size := octet_length(job_args::text);
    IF args_size > 1048576 THEN
        RAISE EXCEPTION 'pgqueue.enqueue: args are % bytes, over the 1048576-byte limit', args_size
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    IF job_queue !~ '^[a-z0-9_-]{1,63}$' THEN
        RAISE EXCEPTION 'pgqueue.enqueue: queue name % must match [a-z0-9_-]{1,63}', quote_literal(job_queue)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF job_priority NOT BETWEEN -32768 AND 32767 THEN
        RAISE EXCEPTION 'pgqueue.enqueue: priority % must be between -32768 and 32767', job_priority
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF job_attempts NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'pgqueue.enqueue: max_attempts % must be an integer from 1 to 10000', job_attempts
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF enqueue.unique_key = '' THEN
        RAISE EXCEPTION 'pgqueue.enqueue: unique_key '''' must be a non-empty string'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(job_tags) > 32 THEN
        RAISE EXCEPTION 'pgqueue.enqueue: a job takes at most 32 tags, got %', cardinality(job_tags)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH tag IN ARRAY job_tags LOOP
        IF tag IS NULL OR tag = '' OR length(tag) > 128 THEN
            RAISE EXCEPTION 'pgqueue.enqueue: tag % must be a non-empty string of at most 128 characters',
                quote_nullable(tag)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;

    job_state := CASE WHEN job_run_at > now() THEN 'scheduled' ELSE 'available' END;
    IF enqueue.unique_key IS NULL THEN
        INSERT INTO pgqueue.jobs (task, queue, state, priority, args, max_attempts, run_at, tags)
        VALUES (enqueue.task, job_queue, job_state, job_priority, job_args, job_attempts, job_run_at, job_tags)
        RETURNING id INTO new_id;
    ELSE
        -- As App.enqueue: a live job holding the key wins and its id is returned. It may finish
        -- between the conflict and the look-up; the next INSERT then succeeds.
        FOR try_no IN 1..5 LOOP
            INSERT INTO pgqueue.jobs (task, queue, state, priority, args, max_attempts, run_at, unique_key, tags)
            VALUES (enqueue.task, job_queue, job_state, job_priority, job_args, job_attempts, job_run_at,
                    enqueue.unique_key, job_tags)
            ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running')
            DO NOTHING
            RETURNING id INTO new_id;
            EXIT WHEN new_id IS NOT NULL;
            SELECT id INTO new_id FROM pgqueue.jobs
            WHERE unique_key = enqueue.unique_key AND state IN ('scheduled', 'available', 'running');
            IF new_id IS NOT NULL THEN
                RETURN new_id;
            END IF;
        END LOOP;
        IF new_id IS NULL THEN
            RAISE EXCEPTION 'pgqueue.enqueue: could not enqueue unique job %: it kept changing state',
                quote_literal(enqueue.unique_key)
                USING ERRCODE = 'serialization_failure';
        END IF;
    END IF;
    INSERT INTO pgqueue.job_events (job_id, event, to_state, attempt, actor)
    VALUES (new_id, 'enqueued', job_state, 0, current_user);
    IF job_state = 'available' THEN
        -- pgqueue._db.notifications.NOTIFY_CHANNEL; sent only if the caller's transaction commits.
        PERFORM pg_notify('pgqueue_jobs', job_queue);
    END IF;
    RETURN new_id;
END
$$
"""


def upgrade() -> None:
    op.execute(dedent(ENQUEUE).strip())
    op.execute(f"REVOKE EXECUTE ON FUNCTION pgqueue.enqueue({SIGNATURE}) FROM PUBLIC")
    op.execute(f"COMMENT ON FUNCTION pgqueue.enqueue({SIGNATURE}) IS "
               "'Enqueue a plaintext job in the caller''s transaction; returns its id (see sql/README.md)'")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION pgqueue.enqueue({SIGNATURE})")
