-- name: report_throughput
-- Throughput per queue per hour: jobs that finished in each hour of the last day, by outcome
-- (completed; failed: the dead-letter set; cancelled). Hours with no finished job are left out.
--
-- Optional session settings change the window and the bucket, e.g. the dashboard's last hour in
-- 5-minute buckets:  SET pgqueue.report_window = '1 hour'; SET pgqueue.report_bucket = '5 minutes';
-- Reads only the window, through the index on finished_at.
SELECT j.queue,
       date_bin((SELECT COALESCE(NULLIF(current_setting('pgqueue.report_bucket', true), '')::interval,
                                 interval '1 hour')),
                j.finished_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket_start,
       count(*) FILTER (WHERE j.state = 'completed') AS completed,
       count(*) FILTER (WHERE j.state = 'failed') AS failed,
       count(*) FILTER (WHERE j.state = 'cancelled') AS cancelled
FROM pgqueue.jobs AS j
WHERE j.state IN ('completed', 'failed', 'cancelled')
  AND j.finished_at >= now() - (SELECT COALESCE(NULLIF(current_setting('pgqueue.report_window', true), '')::interval,
                                                interval '24 hours'))
GROUP BY j.queue, bucket_start
ORDER BY j.queue, bucket_start;
