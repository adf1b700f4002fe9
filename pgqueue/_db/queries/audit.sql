-- Queries on pgqueue.job_events, the append-only audit trail, and pgqueue.audit_seals, the hash
-- chain over it. Event rows are written by the statements that change state (jobs.sql,
-- workers.sql, queues.sql, schedules.sql, keys.sql, retention.sql), in the same transaction; this
-- file reads them, seals them and prunes whole sealed ranges.

-- name: list_job_events
-- The trail of one job in the order it happened (id, not at: several rows share a transaction's now()),
-- with the seal that covers each row (NULL while it is pending).
SELECT e.id, e.job_id, e.at, e.event, e.from_state, e.to_state, e.attempt, e.worker_id, e.actor, e.detail,
       s.seal_no
FROM pgqueue.job_events AS e
LEFT JOIN LATERAL (
    SELECT seal_no FROM pgqueue.audit_seals AS s
    WHERE s.xid_from <= COALESCE(e.xid, '0'::xid8) AND COALESCE(e.xid, '0'::xid8) < s.xid_to
    ORDER BY s.seal_no DESC
    LIMIT 1
) AS s ON true
WHERE e.job_id = %(job_id)s
ORDER BY e.id;

-- name: last_seal
-- The chain's head, and the sealing horizon: the oldest transaction still running anywhere in
-- the cluster. Every transaction below it has committed or aborted, so the set of event rows
-- with an xid below it can no longer change (short of tampering).
SELECT s.seal_no, s.xid_to, s.digest, pg_snapshot_xmin(pg_current_snapshot()) AS horizon
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
    SELECT seal_no, xid_to, digest FROM pgqueue.audit_seals ORDER BY seal_no DESC LIMIT 1
) AS s ON true;

-- name: seal_cap
-- The xid at which a range starting at xid_from holds more than max_events rows (NULL if it
-- does not), so one seal stays a bounded amount of work.
SELECT xid FROM pgqueue.job_events
WHERE xid >= %(xid_from)s AND xid < %(xid_to)s
ORDER BY xid
OFFSET %(max_events)s
LIMIT 1;

-- name: next_xid_after
-- The smallest xid above a given one with events, for a single transaction larger than the cap.
SELECT min(xid) FROM pgqueue.job_events WHERE xid > %(xid)s AND xid < %(xid_to)s;

-- name: range_digests
-- For each range [xid_from, xid_to): its row count, first and last `at`, and
-- sha256 of the concatenated sha256 of each row rendered canonically, in id order. The rendering
-- does not depend on session settings (time as epoch microseconds; jsonb's text form is canonical).
-- Rows with a NULL xid (written before migration 0002) belong to the range that starts at 0.
SELECT r.ord, d.events, d.first_at, d.last_at, d.digest
FROM unnest(%(xid_from)s::xid8[], %(xid_to)s::xid8[]) WITH ORDINALITY AS r(xid_from, xid_to, ord)
CROSS JOIN LATERAL (
    SELECT count(*) AS events, min(e.at) AS first_at, max(e.at) AS last_at,
           sha256(COALESCE(string_agg(
               sha256(convert_to(ROW(e.id, e.job_id, (extract(epoch FROM e.at) * 1000000)::bigint, e.event,
                                     e.from_state, e.to_state, e.attempt, e.worker_id, e.actor, e.detail,
                                     e.xid)::text, 'UTF8')),
               ''::bytea ORDER BY e.id), ''::bytea)) AS digest
    FROM (
        SELECT * FROM pgqueue.job_events WHERE xid >= r.xid_from AND xid < r.xid_to
        UNION ALL
        SELECT * FROM pgqueue.job_events WHERE r.xid_from = '0'::xid8 AND xid IS NULL
    ) AS e
) AS d
ORDER BY r.ord;

-- name: insert_seal
-- A concurrent sealer that got there first wins; this one then inserts nothing.
INSERT INTO pgqueue.audit_seals (seal_no, xid_from, xid_to, events, first_at, last_at, prev_digest, digest)
VALUES (%(seal_no)s, %(xid_from)s, %(xid_to)s, %(events)s, %(first_at)s, %(last_at)s, %(prev_digest)s, %(digest)s)
ON CONFLICT (seal_no) DO NOTHING
RETURNING seal_no;

-- name: list_seals
-- A page of the chain, in order.
SELECT seal_no, xid_from, xid_to, events, first_at, last_at, prev_digest, digest, sealed_at, pruned_at
FROM pgqueue.audit_seals
WHERE seal_no > %(after)s
ORDER BY seal_no
LIMIT %(limit)s;

-- name: get_seals
SELECT seal_no, xid_from, xid_to, events, first_at, last_at, prev_digest, digest, sealed_at, pruned_at
FROM pgqueue.audit_seals
WHERE seal_no = ANY(%(seal_nos)s)
ORDER BY seal_no;

-- name: count_seals
SELECT count(*) FROM pgqueue.audit_seals;

-- name: count_pending_events
-- Rows not covered by any seal yet (written after the head's range).
SELECT count(*) FROM pgqueue.job_events
WHERE xid >= %(xid_from)s OR (%(xid_from)s = '0'::xid8 AND xid IS NULL);

-- name: may_seal
-- Whether this session can seal: a read-only role (pgqueue_reader) or a standby verifies the
-- sealed chain without sealing, and reports the rest as pending.
SELECT has_table_privilege('pgqueue.audit_seals', 'INSERT') AND NOT pg_is_in_recovery()
       AND current_setting('transaction_read_only') = 'off';

-- name: prunable_seals
-- The oldest unpruned seals, in chain order, with their newest row's time; retention prunes the
-- prefix of them that is older than its cutoff (the audit_seals_chain trigger allows nothing else).
SELECT seal_no, xid_from, xid_to, last_at
FROM pgqueue.audit_seals
WHERE pruned_at IS NULL
ORDER BY seal_no
LIMIT %(limit)s;

-- name: count_prunable_events
-- What pruning at a cutoff would delete: the rows of the unpruned seals older than the cutoff
-- that come before the first seal still within retention.
SELECT COALESCE(sum(events), 0)
FROM pgqueue.audit_seals
WHERE pruned_at IS NULL
  AND seal_no < COALESCE((SELECT min(seal_no) FROM pgqueue.audit_seals
                          WHERE pruned_at IS NULL AND last_at >= %(before)s), 9223372036854775807);

-- name: delete_sealed_events
DELETE FROM pgqueue.job_events
WHERE (xid >= %(xid_from)s AND xid < %(xid_to)s) OR (%(xid_from)s = '0'::xid8 AND xid IS NULL);

-- name: mark_seal_pruned
UPDATE pgqueue.audit_seals SET pruned_at = now() WHERE seal_no = %(seal_no)s AND pruned_at IS NULL;

-- name: events_horizon
SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon;

-- name: finished_events
-- Outcome rows of the audit trail written by transactions in [%(xid_from)s, horizon), counted per
-- (event, queue, task) and per run-time bucket (width_bucket over %(bounds)s, upper bounds in
-- seconds). Every transaction below the horizon (the oldest one still running) has ended, so
-- no row can later appear in a range already read: the metrics endpoint counts each row once.
-- The queue and task come from pgqueue.jobs (NULL once retention pruned the job); the run time is
-- known while the job still shows the attempt the event closed.
WITH bounds AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon
), outcomes AS (
    SELECT e.event, j.queue, j.task,
           CASE WHEN j.attempt = e.attempt AND j.started_at IS NOT NULL
                THEN GREATEST(EXTRACT(EPOCH FROM e.at - j.started_at), 0)::float8 END AS seconds
    FROM bounds
    JOIN pgqueue.job_events AS e ON e.xid >= %(xid_from)s::xid8 AND e.xid < bounds.horizon
    LEFT JOIN pgqueue.jobs AS j ON j.id = e.job_id
    WHERE e.event IN ('completed', 'failed', 'discarded', 'retry_scheduled', 'rescued', 'cancelled')
)
SELECT (SELECT horizon FROM bounds) AS horizon, event, queue, task,
       CASE WHEN seconds IS NOT NULL THEN width_bucket(seconds, %(bounds)s::float8[]) END AS bucket,
       count(*) AS events, COALESCE(sum(seconds), 0)::float8 AS seconds
FROM outcomes
GROUP BY event, queue, task, bucket
UNION ALL
SELECT horizon, NULL, NULL, NULL, NULL, 0, 0 FROM bounds;
