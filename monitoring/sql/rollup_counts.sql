-- Rollup minutes in [since, until) added up per server and function (NULL bounds are
-- open); `server` narrows to one server name.
SELECT r.server_id, r.function, sum(r.submitted), sum(r.completed), sum(r.failed)
FROM monitoring_rollup r
WHERE (%(since)s::timestamptz IS NULL OR r.minute >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR r.minute < %(until)s)
  AND (%(server)s::text IS NULL
       OR r.server_id = (SELECT id FROM jobs_server WHERE name = %(server)s))
GROUP BY 1, 2
