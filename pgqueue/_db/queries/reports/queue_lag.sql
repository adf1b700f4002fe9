-- name: report_queue_lag
-- Queue lag now: per queue, its settings, the jobs waiting (on dependencies, scheduled, available), running, and in
-- the dead-letter set (failed, cancelled), and lag: how long its oldest available job has been
-- ready to run (NULL when nothing is waiting). A growing lag means the workers do not keep up.
--
-- Each count reads only the partial index of its state, so the cost follows the backlog and the
-- dead-letter set, not the size of pgqueue.jobs: the dashboard and /metrics run it on every poll.
-- (Exact all-time totals, completed jobs included, are in the pgqueue.queue_stats view, which
-- reads every job.)
WITH counted AS (
    SELECT queue, 'available' AS state, count(*) AS jobs, min(run_at) AS oldest_run_at
    FROM pgqueue.jobs WHERE state = 'available' GROUP BY queue
    UNION ALL
    SELECT queue, 'scheduled', count(*), NULL FROM pgqueue.jobs WHERE state = 'scheduled' GROUP BY queue
    UNION ALL
    SELECT queue, 'running', count(*), NULL FROM pgqueue.jobs WHERE state = 'running' GROUP BY queue
    UNION ALL
    SELECT queue, 'waiting', count(*), NULL FROM pgqueue.jobs WHERE state = 'waiting' GROUP BY queue
    UNION ALL
    SELECT queue, state, count(*), NULL FROM pgqueue.jobs WHERE state IN ('failed', 'cancelled')
    GROUP BY queue, state
), names AS (
    SELECT queue FROM counted UNION SELECT name FROM pgqueue.queues
)
SELECT n.queue,
       COALESCE(q.paused, false) AS paused,
       q.concurrency,
       q.rate_limit,
       q.rate_period_seconds,
       COALESCE(sum(c.jobs) FILTER (WHERE c.state = 'scheduled'), 0)::bigint AS scheduled,
       COALESCE(sum(c.jobs) FILTER (WHERE c.state = 'available'), 0)::bigint AS available,
       COALESCE(sum(c.jobs) FILTER (WHERE c.state = 'running'), 0)::bigint AS running,
       COALESCE(sum(c.jobs) FILTER (WHERE c.state = 'failed'), 0)::bigint AS failed,
       COALESCE(sum(c.jobs) FILTER (WHERE c.state = 'cancelled'), 0)::bigint AS cancelled,
       EXTRACT(EPOCH FROM now() - min(c.oldest_run_at))::float8 AS lag_seconds,
       COALESCE(sum(c.jobs) FILTER (WHERE c.state = 'waiting'), 0)::bigint AS waiting
FROM names AS n
LEFT JOIN pgqueue.queues AS q ON q.name = n.queue
LEFT JOIN counted AS c ON c.queue = n.queue
GROUP BY n.queue, q.paused, q.concurrency, q.rate_limit, q.rate_period_seconds
ORDER BY n.queue;
