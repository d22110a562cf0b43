"""The append-only event table, partitioned by day on ``at``; and the search index.

Django cannot declare a partitioned table, so it is created here in SQL (the JobEvent
model is unmanaged). ``hq_ensure_event_partition(day)`` creates the partition for one day
and is called by the ingest writer for each day it writes; a DEFAULT partition catches
anything else (events replayed from an old capture), so an insert never fails for lack of
a partition. Retention drops whole partitions.
"""

from django.db import migrations

CREATE = """
CREATE TABLE jobs_jobevent (
    id uuid NOT NULL,
    at timestamptz NOT NULL,
    server_id bigint NOT NULL,
    boot_id bigint NOT NULL,
    handle varchar(255) NOT NULL,
    kind varchar(20) NOT NULL,
    conn varchar(100) NOT NULL DEFAULT '',
    worker varchar(255) NOT NULL DEFAULT '',
    numerator bigint,
    denominator bigint,
    data_text text,
    data_bin bytea,
    size integer NOT NULL DEFAULT 0,
    detail text NOT NULL DEFAULT '',
    PRIMARY KEY (at, id)
) PARTITION BY RANGE (at);
CREATE TABLE jobs_jobevent_default PARTITION OF jobs_jobevent DEFAULT;
CREATE INDEX jobs_jobevent_job ON jobs_jobevent (boot_id, handle, at);

CREATE FUNCTION hq_job_search_text(handle text, uniq text, func text, payload text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT handle || ' ' || uniq || ' ' || func || ' ' || coalesce(left(payload, 4096), '')
$$;
CREATE INDEX job_search_trgm ON jobs_job
    USING gin (hq_job_search_text(handle, "unique", function, payload_text) gin_trgm_ops);

CREATE FUNCTION hq_ensure_event_partition(day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    name text := 'jobs_jobevent_' || to_char(day, 'YYYYMMDD');
BEGIN
    IF to_regclass(name) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I PARTITION OF jobs_jobevent '
            'FOR VALUES FROM (%L) TO (%L)',
            name, day::timestamptz, (day + 1)::timestamptz);
    END IF;
EXCEPTION WHEN check_violation OR invalid_object_definition THEN
    -- rows for that day already sit in the default partition: leave them there
    NULL;
END $$;
"""

DROP = """
DROP INDEX IF EXISTS job_search_trgm;
DROP FUNCTION IF EXISTS hq_job_search_text(text, text, text, text);
DROP FUNCTION IF EXISTS hq_ensure_event_partition(date);
DROP TABLE IF EXISTS jobs_jobevent CASCADE;
"""


class Migration(migrations.Migration):
    dependencies = [("jobs", "0001_initial")]

    operations = [migrations.RunSQL(CREATE, DROP)]
