-- The runtime and wait histograms of the same rollup minutes, added bucket by bucket in
-- SQL (thousands of minute rows never reach Python). A malformed histogram counts as empty.
SELECT r.server_id, r.function, h.kind, e.i - 1, sum(e.n::numeric)
FROM monitoring_rollup r
CROSS JOIN LATERAL (VALUES ('runtime', r.runtime_hist), ('wait', r.wait_hist)) AS h(kind, hist)
CROSS JOIN LATERAL jsonb_array_elements_text(
    CASE WHEN jsonb_typeof(h.hist) = 'array' THEN h.hist ELSE '[]' END
) WITH ORDINALITY AS e(n, i)
WHERE (%(since)s::timestamptz IS NULL OR r.minute >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR r.minute < %(until)s)
  AND (%(server)s::text IS NULL
       OR r.server_id = (SELECT id FROM jobs_server WHERE name = %(server)s))
  AND e.n NOT IN ('0', 'null')
GROUP BY 1, 2, 3, 4
