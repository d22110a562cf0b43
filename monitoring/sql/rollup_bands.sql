-- Rollup minutes since the oldest of `starts` (ascending), one row each with its band:
-- band k holds the minutes in [starts[k], starts[k+1]), so a window that starts at
-- starts[j] is the bands j and above; `server` and `functions` narrow it. The histograms come whole: adding them up in
-- Python costs a third of unnesting them into rows and summing in SQL (measured on
-- 7,500 minute rows: 145 ms against 350-650 ms).
SELECT r.server_id, r.function, width_bucket(r.minute, %(starts)s::timestamptz[]),
       r.submitted, r.completed, r.failed, r.runtime_hist, r.wait_hist
FROM monitoring_rollup r
WHERE r.minute >= %(since)s
  AND (%(server)s::text IS NULL
       OR r.server_id = (SELECT id FROM jobs_server WHERE name = %(server)s))
  AND (%(functions)s::text[] IS NULL OR r.function = ANY(%(functions)s::text[]))
