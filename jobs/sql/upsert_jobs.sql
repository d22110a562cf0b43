-- A batch's job deltas merged into the job table in one statement (run by jobs/store.py).
--
-- Filled in by psycopg.sql: job = the job table, stage = the staging table the deltas were
-- copied into; s is a staged delta, j the stored row; the parameter server is the server id.
-- The first CTE inserts the jobs seen for the first time; the UPDATE, which runs on the
-- statement's snapshot and so cannot see those new rows, merges the deltas of jobs already
-- stored. Both return (id, handle, function, state) of every job the batch changed.
-- A duration in milliseconds is (extract(epoch FROM later - earlier) * 1000)::int.
WITH inserted AS (
    INSERT INTO {job} (
        server_id, boot_id, handle, function, "unique", priority, background, state,
        submitted_at, scheduled_for, started_at, finished_at, wait_ms, runtime_ms, attempts,
        worker, progress_numerator, progress_denominator, payload_text, payload_bin,
        payload_size, result_text, result_bin, result_size, error, clients, updated_at)
    SELECT %(server)s, s.boot_id, s.handle, coalesce(s.function, ''),
        coalesce(s."unique", ''), coalesce(s.priority, ''), s.background,
        coalesce(s.state, 'running'), s.submitted_at, s.scheduled_for, s.started_at,
        s.finished_at,
        (extract(epoch FROM s.first_started_at - s.submitted_at) * 1000)::int,
        (extract(epoch FROM s.finished_at - s.started_at) * 1000)::int,
        s.attempts, coalesce(s.worker, ''),
        s.progress_numerator, s.progress_denominator, s.payload_text, s.payload_bin,
        coalesce(s.payload_size, 0), s.result_text, s.result_bin, coalesce(s.result_size, 0),
        coalesce(s.error, ''), s.clients, now()
    FROM {stage} s
    ON CONFLICT (boot_id, handle) DO NOTHING
    RETURNING id, handle, function, state
), updated AS (
UPDATE {job} j SET
    function = CASE WHEN s.function <> '' THEN s.function ELSE j.function END,
    "unique" = CASE WHEN s."unique" <> '' THEN s."unique" ELSE j."unique" END,
    priority = CASE WHEN s.priority <> '' THEN s.priority ELSE j.priority END,
    background = coalesce(s.background, j.background),
    state = CASE WHEN s.state IS NULL OR s.state_initial THEN j.state ELSE s.state END,
    submitted_at = coalesce(j.submitted_at, s.submitted_at),
    scheduled_for = coalesce(s.scheduled_for, j.scheduled_for),
    started_at = coalesce(s.started_at, j.started_at),
    finished_at = CASE WHEN s.started_at IS NOT NULL
                            OR (s.state = 'queued' AND NOT s.state_initial) THEN s.finished_at
                       ELSE coalesce(s.finished_at, j.finished_at) END,
    wait_ms = coalesce(j.wait_ms,
        (extract(epoch FROM coalesce(s.first_started_at, j.started_at)
                            - coalesce(j.submitted_at, s.submitted_at)) * 1000)::int),
    runtime_ms = CASE
        WHEN s.finished_at IS NOT NULL
            THEN (extract(epoch FROM s.finished_at - coalesce(s.started_at, j.started_at))
                  * 1000)::int
        WHEN s.started_at IS NOT NULL OR (s.state = 'queued' AND NOT s.state_initial)
            THEN NULL
        ELSE j.runtime_ms END,
    attempts = j.attempts + s.attempts,
    worker = CASE WHEN s.worker <> '' THEN s.worker ELSE j.worker END,
    progress_numerator = coalesce(s.progress_numerator, j.progress_numerator),
    progress_denominator = coalesce(s.progress_denominator, j.progress_denominator),
    payload_text = CASE WHEN j.payload_text IS NULL AND j.payload_bin IS NULL
                        THEN s.payload_text ELSE j.payload_text END,
    payload_bin = CASE WHEN j.payload_text IS NULL AND j.payload_bin IS NULL
                       THEN s.payload_bin ELSE j.payload_bin END,
    payload_size = CASE WHEN j.payload_text IS NULL AND j.payload_bin IS NULL
                        THEN coalesce(s.payload_size, j.payload_size) ELSE j.payload_size END,
    result_text = CASE WHEN s.result_size IS NOT NULL THEN s.result_text ELSE j.result_text END,
    result_bin = CASE WHEN s.result_size IS NOT NULL THEN s.result_bin ELSE j.result_bin END,
    result_size = coalesce(s.result_size, j.result_size),
    error = CASE WHEN s.error <> '' THEN s.error ELSE j.error END,
    clients = j.clients + s.clients,
    updated_at = now()
FROM {stage} s
WHERE j.boot_id = s.boot_id AND j.handle = s.handle
RETURNING j.id, j.handle, j.function, j.state
)
SELECT * FROM inserted UNION ALL SELECT * FROM updated
