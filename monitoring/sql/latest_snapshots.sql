-- gearmand's latest `status` line per server and function, polled since `since`;
-- `server` (a server name) narrows it to one server, NULL means every server.
SELECT DISTINCT ON (q.server_id, q.function)
       q.server_id, s.name, q.function, q.total, q.running, q.workers, q.at
FROM monitoring_queuesnapshot q
JOIN jobs_server s ON s.id = q.server_id
WHERE q.at >= %(since)s
  AND (%(server)s::text IS NULL OR s.name = %(server)s)
ORDER BY q.server_id, q.function, q.at DESC
