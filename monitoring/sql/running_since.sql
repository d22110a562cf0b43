-- When the longest-running job started, per server and function.
SELECT server_id, function, min(started_at)
FROM jobs_job
WHERE state = 'running' AND started_at IS NOT NULL
GROUP BY 1, 2
