"""A search text that costs a recorded job less: the trigram index (``job_search_trgm``)
was ~40 % of Postgres's CPU per job (bench/cost.py, issue 13).

Measured per inserted row (backend CPU, 50,000 rows in batches of 1,600, pending list
merged): the old text (handle, unique, function, first 4,096 characters of the payload)
~30 µs over the row without it; this one ~12-15 µs. What is left out:

- the handle: unique per job, found whole by the ``job_handle`` btree (``q`` ORs an exact
  handle match, jobs/selectors.py);
- a unique key shaped like a UUID (libgearman gives every submit one when the client sets
  none): ~37 random trigrams a job, half of the index's cost, and nobody searches for a
  piece of one; ``q`` matches it whole through the ``job_unique`` btree. Other unique keys
  stay, so a part of ``order-4711`` is still found;
- payload text past its first 512 characters (4,096 before): a 4 KB text payload cost
  ~1.2 ms of index a job, 512 characters ~0.15 ms.

The new index is built beside the old one without blocking the tap's writes, then takes
its name. Reversible.
"""

from django.db import migrations

UUID = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

NEW_FUNCTION = f"""
CREATE FUNCTION hq_job_search_text(uniq text, func text, payload text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT func || ' ' || CASE WHEN uniq ~* '{UUID}' THEN '' ELSE uniq END
        || ' ' || coalesce(left(payload, 512), '')
$$
"""
OLD_FUNCTION = """
CREATE FUNCTION hq_job_search_text(handle text, uniq text, func text, payload text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT handle || ' ' || uniq || ' ' || func || ' ' || coalesce(left(payload, 4096), '')
$$
"""
NEW_INDEX = """
CREATE INDEX CONCURRENTLY job_search_trgm_next ON jobs_job
    USING gin (hq_job_search_text("unique", function, payload_text) gin_trgm_ops)
    WITH (gin_pending_list_limit = 32768)
"""
OLD_INDEX = """
CREATE INDEX CONCURRENTLY job_search_trgm ON jobs_job
    USING gin (hq_job_search_text(handle, "unique", function, payload_text) gin_trgm_ops)
    WITH (gin_pending_list_limit = 32768)
"""


class Migration(migrations.Migration):
    atomic = False  # CREATE / DROP INDEX CONCURRENTLY

    dependencies = [("jobs", "0012_restored_jobs")]

    operations = [
        migrations.RunSQL(NEW_FUNCTION,
                          "DROP FUNCTION hq_job_search_text(text, text, text)"),
        migrations.RunSQL(NEW_INDEX, "DROP INDEX CONCURRENTLY job_search_trgm_next"),
        migrations.RunSQL("DROP INDEX CONCURRENTLY job_search_trgm", OLD_INDEX),
        migrations.RunSQL("ALTER INDEX job_search_trgm_next RENAME TO job_search_trgm",
                          "ALTER INDEX job_search_trgm RENAME TO job_search_trgm_next"),
        migrations.RunSQL("DROP FUNCTION hq_job_search_text(text, text, text, text)",
                          OLD_FUNCTION),
    ]
