-- name: report_failure_rate
-- Failure rate per task per day over the last week: of the jobs that ended each day (completed or
-- failed; cancelled ones are left out), the share that ended failed, i.e. in the dead-letter set.
-- Days follow the session's TimeZone.
--
-- Optional: SET pgqueue.report_window = '30 days';  Reads only the window (index on finished_at).
SELECT j.task,
       date_trunc('day', j.finished_at) AS day,
       count(*) AS finished,
       count(*) FILTER (WHERE j.state = 'failed') AS failed,
       round(count(*) FILTER (WHERE j.state = 'failed')::numeric / count(*), 4) AS failure_rate
FROM pgqueue.jobs AS j
WHERE j.state IN ('completed', 'failed')
  AND j.finished_at >= now() - (SELECT COALESCE(NULLIF(current_setting('pgqueue.report_window', true), '')::interval,
                                                interval '7 days'))
GROUP BY j.task, day
ORDER BY day, j.task;
