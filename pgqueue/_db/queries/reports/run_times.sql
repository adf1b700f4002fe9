-- name: report_run_times
-- Run time per task over the last day: p50 and p95 (and the maximum) of the seconds between the
-- start of a completed job's final attempt and its completion, and how many jobs that covers.
--
-- Optional: SET pgqueue.report_window = '1 hour';  Reads only the window (index on finished_at).
SELECT j.task,
       count(*) AS jobs,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM j.finished_at - j.started_at))::float8
           AS p50_seconds,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM j.finished_at - j.started_at))::float8
           AS p95_seconds,
       max(EXTRACT(EPOCH FROM j.finished_at - j.started_at))::float8 AS max_seconds
FROM pgqueue.jobs AS j
WHERE j.state = 'completed'
  AND j.started_at IS NOT NULL
  AND j.finished_at >= now() - (SELECT COALESCE(NULLIF(current_setting('pgqueue.report_window', true), '')::interval,
                                                interval '24 hours'))
GROUP BY j.task
ORDER BY j.task;
