-- Which of the given (server name, function) pairs have a rollup minute since `since`
-- (a job submitted, completed or failed): one probe of the rollup_key index each.
SELECT k.server, k.function
FROM unnest(%(servers)s::text[], %(functions)s::text[]) AS k(server, function)
JOIN jobs_server s ON s.name = k.server
WHERE EXISTS (SELECT 1 FROM monitoring_rollup r
              WHERE r.server_id = s.id AND r.function = k.function
                AND r.minute >= %(since)s)
