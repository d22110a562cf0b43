"""What ``q`` finds since the trigram text was made lighter (migration 0013, issue 13):
a whole handle, a unique key (a UUID one whole), any part of a function name or of the
payload's first 512 characters; and that the ORM's search text is the indexed one."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection

from jobs.models import Boot, Job, SearchText, Server
from jobs.selectors import search_jobs

T0 = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
UUID_KEY = "6f1c2e4a-93b0-4d5e-8a7f-0b1c2d3e4f50"


@pytest.fixture
def boot(db: None) -> Boot:
    server = Server.objects.create(name="gm1", address="10.0.0.5:4730")
    return Boot.objects.create(server=server, token="4242", first_seen=T0)


def make_job(boot: Boot, handle: str, **fields: object) -> Job:
    values: dict[str, object] = {"function": "resize_image", "state": "completed",
                                 "submitted_at": T0, "updated_at": T0}
    values.update(fields)
    return Job.objects.create(server=boot.server, boot=boot, handle=handle, **values)


def found(q: str) -> list[str]:
    return sorted(j.handle for j in search_jobs({"q": q}))


@pytest.mark.django_db
def test_q_finds_names_keys_and_payload_text(boot: Boot) -> None:
    make_job(boot, "H:gm1:1", function="send_mail", unique="order-4711",
             payload_text='{"to": "ops@example.com"}')
    make_job(boot, "H:gm1:2", unique=UUID_KEY, payload_text='{"sku": "SKU-99"}')
    make_job(boot, "H:gm1:3", function="billing_charge")
    assert found("H:gm1:1") == ["H:gm1:1"]          # a whole handle
    assert found("end_ma") == ["H:gm1:1"]           # part of a function name
    assert found("SEND_MAIL") == ["H:gm1:1"]        # case-insensitive
    assert found("der-47") == ["H:gm1:1"]           # part of a unique key
    assert found("ops@example") == ["H:gm1:1"]      # payload text
    assert found(UUID_KEY) == ["H:gm1:2"]           # a UUID key, whole
    assert found("sku-99") == ["H:gm1:2"]
    assert found("charge") == ["H:gm1:3"]
    assert found("ab") == []                          # too short: exact matches only


@pytest.mark.django_db
def test_what_q_leaves_out(boot: Boot) -> None:
    """Pieces of a handle and of a UUID unique key, and payload text past 512 characters,
    are not in the index (each would cost every recorded job)."""
    make_job(boot, "H:gm1:4711", unique=UUID_KEY,
             payload_text="x" * 500 + " early-word " + "y" * 600 + " late-word")
    assert found("gm1:47") == []
    assert found(UUID_KEY[:13]) == []
    assert found("early-word") == ["H:gm1:4711"]
    assert found("late-word") == []


@pytest.mark.django_db
def test_the_search_text_is_what_the_function_builds(boot: Boot) -> None:
    make_job(boot, "H:gm1:1", function="fn", unique=UUID_KEY.upper(), payload_text="p" * 600)
    make_job(boot, "H:gm1:2", function="fn", unique="key-1", payload_text=None)
    texts = dict(Job.objects.annotate(t=SearchText()).values_list("handle", "t"))
    assert texts == {"H:gm1:1": "fn  " + "p" * 512, "H:gm1:2": "fn key-1 "}


@pytest.mark.django_db
def test_q_uses_the_trigram_index_and_the_handle_and_unique_btrees(boot: Boot) -> None:
    """The ORM's expression must be the index's, or every ``q`` reads the whole table."""
    make_job(boot, "H:gm1:1", payload_text="hello")
    sql, params = search_jobs({"q": "hello world"}).query.sql_with_params()
    with connection.cursor() as cur:
        cur.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_indexscan = off")
        cur.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cur.fetchall())
    assert "job_search_trgm" in plan, plan
    assert "job_handle" in plan and "job_unique" in plan, plan


@pytest.mark.django_db
def test_the_index_holds_no_handle(db: None) -> None:
    with connection.cursor() as cur:
        cur.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'job_search_trgm'")
        row = cur.fetchone()
    assert row is not None
    definition = row[0]
    assert "hq_job_search_text((\"unique\")::text, (function)::text, payload_text)" \
        in definition, definition
    assert "gin_pending_list_limit='32768'" in definition, definition
