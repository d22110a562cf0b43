-- The last `points` queue depths per server and function since `since`, oldest first.
SELECT server_id, function, total - running
FROM (
    SELECT q.server_id, q.function, q.total, q.running, q.at,
           row_number() OVER (PARTITION BY q.server_id, q.function ORDER BY q.at DESC) AS n
    FROM monitoring_queuesnapshot q
    WHERE q.at >= %(since)s
      AND (%(server)s::text IS NULL
           OR q.server_id = (SELECT id FROM jobs_server WHERE name = %(server)s))
) recent
WHERE n <= %(points)s
ORDER BY server_id, function, at
