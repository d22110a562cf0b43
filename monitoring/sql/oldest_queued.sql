-- When the oldest job still queued was submitted, per server and function.
SELECT server_id, function, min(submitted_at)
FROM jobs_job
WHERE state = 'queued' AND submitted_at IS NOT NULL
  AND (%(server)s::text IS NULL
       OR server_id = (SELECT id FROM jobs_server WHERE name = %(server)s))
GROUP BY 1, 2
