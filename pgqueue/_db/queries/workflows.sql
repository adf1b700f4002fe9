-- Workflows: the jobs of one workflow_id (chains and groups, and jobs added to them with
-- depends_on), read and steered as a whole. The dependency books are kept by the triggers of
-- migration 0010; these statements only read them or change job states.

-- name: get_workflow_jobs
-- Through jobs_workflow_idx; each job with the ids it depends on, in id order (enqueue order).
-- The first %(limit)s jobs (NULL: all of them), and %(job_id)s's own row wherever it is: what a
-- page that polls shows (the dashboard's job page), not the whole of a 5,000-job group.
WITH head AS (
    SELECT id FROM pgqueue.jobs WHERE workflow_id = %(workflow_id)s::uuid ORDER BY id LIMIT %(limit)s
)
SELECT j.id, j.task, j.queue, j.state, j.attempt, j.max_attempts, j.pending_dependencies,
       j.on_dependency_failure, j.enqueued_at, j.started_at, j.finished_at, j.last_error ->> 'type' AS error_type,
       ARRAY(SELECT e.depends_on FROM pgqueue.job_dependencies AS e WHERE e.job_id = j.id ORDER BY e.depends_on)
           AS depends_on
FROM pgqueue.jobs AS j
WHERE j.workflow_id = %(workflow_id)s::uuid
  AND (j.id IN (SELECT id FROM head) OR j.id = %(job_id)s::bigint)
ORDER BY j.id;

-- name: count_workflow_jobs
-- Through jobs_workflow_idx: how many jobs of the workflow are in each state.
SELECT state, count(*)::int AS n FROM pgqueue.jobs WHERE workflow_id = %(workflow_id)s::uuid GROUP BY state;

-- name: get_job_workflow
SELECT workflow_id::text FROM pgqueue.jobs WHERE id = %(id)s;

-- name: cancel_workflow
-- Every unfinished job of the workflow, locked in id order (as the settle trigger locks
-- dependents), in one statement with its audit rows.
WITH before AS MATERIALIZED (
    SELECT id, state, lease_token FROM pgqueue.jobs
    WHERE workflow_id = %(workflow_id)s::uuid AND state IN ('waiting', 'scheduled', 'available', 'running')
    ORDER BY id
    FOR NO KEY UPDATE
), cancelled AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'cancelled', finished_at = now(), lease_token = NULL
    FROM before
    WHERE j.id = before.id AND j.state IN ('waiting', 'scheduled', 'available', 'running')
    RETURNING j.id, before.state AS from_state, j.attempt
), audit AS (
    INSERT INTO pgqueue.job_events (job_id, event, from_state, to_state, attempt, actor, detail)
    SELECT id, 'cancelled', from_state, 'cancelled', attempt, %(actor)s,
           jsonb_strip_nulls(jsonb_build_object('workflow_id', %(workflow_id)s::text, 'source', %(source)s::text))
    FROM cancelled
), woken AS (
    SELECT pg_notify(%(done_channel)s, '') FROM (SELECT 1 FROM cancelled LIMIT 1) AS any_row
), interrupted AS (
    -- Running jobs: their workers interrupt the handler (as for cancel_job in jobs.sql).
    SELECT pg_notify(%(cancel_channel)s, before.id || ':' || before.lease_token)
    FROM before JOIN cancelled ON cancelled.id = before.id
    WHERE before.state = 'running' AND before.lease_token IS NOT NULL
)
SELECT id, (SELECT count(*) FROM woken) + (SELECT count(*) FROM interrupted) AS notified FROM cancelled;

-- name: find_workflow_dead_jobs
-- What retry_workflow hands to retry_jobs: the failed and cancelled jobs of the workflow.
SELECT id FROM pgqueue.jobs
WHERE workflow_id = %(workflow_id)s::uuid AND state IN ('failed', 'cancelled')
ORDER BY id;

-- name: find_workflow_stranded_jobs
-- The failed and cancelled jobs of the workflow that still count down a dependency a workflow
-- retry cannot bring back: one that was deleted (or pruned), or a failed or cancelled job of
-- another workflow. Retried, they would wait for ever, so retry_workflow refuses and names them.
SELECT j.id, j.task, e.depends_on, d.state AS dependency_state
FROM pgqueue.jobs AS j
JOIN pgqueue.job_dependencies AS e ON e.job_id = j.id AND NOT e.resolved
LEFT JOIN pgqueue.jobs AS d ON d.id = e.depends_on
WHERE j.workflow_id = %(workflow_id)s::uuid AND j.state IN ('failed', 'cancelled')
  AND (d.id IS NULL
       OR (d.state IN ('failed', 'cancelled') AND d.workflow_id IS DISTINCT FROM %(workflow_id)s::uuid))
ORDER BY j.id, e.depends_on;

-- name: find_dead_dependency
-- A dependency the job still counts down (an unresolved edge) that will never complete: failed,
-- cancelled or deleted. Only a job under the "cancel" policy has such an edge ("run" resolves it).
SELECT e.depends_on, d.state
FROM pgqueue.job_dependencies AS e
LEFT JOIN pgqueue.jobs AS d ON d.id = e.depends_on
WHERE e.job_id = %(id)s AND NOT e.resolved AND (d.id IS NULL OR d.state IN ('failed', 'cancelled'))
ORDER BY e.depends_on
LIMIT 1;
