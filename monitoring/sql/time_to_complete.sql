-- Time to complete (submitted_at → finished_at, in ms) of the jobs that completed or failed
-- in each window ending at `until`, counted per server, function, window and histogram
-- bucket (monitoring/histogram.py; the bucket expression is put in place of the marker
-- below by selectors.py). One range scan of the job_finished index over the longest
-- window: a window's rows are the ones that finished after `until` minus its length.
-- Jobs without a submit time (submitted before HQ watched) are left out.
SELECT j.server_id, j.function, w.s, j.bucket, count(*)
FROM (
    SELECT server_id, function, finished_at,
           BUCKET_OF_MS AS bucket
    FROM (
        SELECT server_id, function, finished_at,
               greatest(extract(epoch FROM finished_at - submitted_at)::float8 * 1000, 0) AS ms
        FROM jobs_job
        WHERE finished_at >= %(since)s AND finished_at < %(until)s
          AND state IN ('completed', 'failed') AND submitted_at IS NOT NULL
    ) AS finished
) AS j
JOIN unnest(%(windows)s::int[]) AS w(s)
  ON j.finished_at >= %(until)s::timestamptz - make_interval(secs => w.s)
GROUP BY 1, 2, 3, 4
