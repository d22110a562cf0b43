-- One queue's deepest point per bucket of `step` seconds since `since`.
SELECT to_timestamp(floor(extract(epoch FROM at) / %(step)s) * %(step)s) AS t,
       max(total - running)
FROM monitoring_queuesnapshot
WHERE function = %(function)s AND at >= %(since)s
  AND (%(server)s::text IS NULL
       OR server_id = (SELECT id FROM jobs_server WHERE name = %(server)s))
GROUP BY 1
