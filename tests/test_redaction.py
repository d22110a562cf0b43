"""Payload privacy: HQ_REDACT (payloads and results of matching functions are not stored,
and never shown) and HQ_VIEWERS_SEE_PAYLOADS (viewers see no payloads)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest
from django.test import override_settings

from broker.tracker import Event
from jobs.redaction import Redactor, is_redacted, may_see_payloads
from tests.support.worlds import add_job

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractUser
    from django.test import Client
    from rest_framework.test import APIClient

    from jobs.models import Job


@override_settings(HQ_REDACT=["billing_*", "send_password_reset", "[ab]?_secret"])
def test_globs_match_whole_function_names() -> None:
    assert is_redacted("billing_charge") and is_redacted("billing_")
    assert is_redacted("send_password_reset") and is_redacted("a1_secret")
    assert not is_redacted("send_password_reset_v2")
    assert not is_redacted("rebilling_charge") and not is_redacted("Billing_charge")
    assert not is_redacted("c1_secret") and not is_redacted(None) and not is_redacted("")


def test_nothing_is_redacted_by_default() -> None:
    assert not is_redacted("billing_charge")
    with override_settings(HQ_REDACT=[" ", ""]):
        assert not is_redacted("anything")


def _ev(kind: str, handle: str, function: str | None = None, data: bytes | None = b"x",
        boot: str = "1") -> Event:
    return Event(kind, boot, handle, 0.0, function=function, data=data,
                 size=len(data or b""))


@override_settings(HQ_REDACT=["billing_*"])
def test_the_writer_hook_drops_data_of_redacted_jobs_through_their_whole_life() -> None:
    r = Redactor()
    assert r.data(_ev("submitted", "H:1", "billing_charge", b"card=4111")) is None
    assert r.data(_ev("data", "H:1", None, b"partial")) is None
    assert r.data(_ev("completed", "H:1", None, b"receipt")) is None
    # the same handle on another boot, and other functions, keep their data
    assert r.data(_ev("completed", "H:1", None, b"ok", boot="2")) == b"ok"
    assert r.data(_ev("submitted", "H:2", "resize", b"img")) == b"img"
    assert r.data(_ev("completed", "H:2", None, b"done")) == b"done"
    # a job first seen at its start (capture began later) is redacted from there on
    assert r.data(_ev("started", "H:3", "billing_refund", b"p")) is None
    assert r.data(_ev("exception", "H:3", None, b"trace with card number")) is None
    # a handle handed to another function's job (gearmand restarted) is not redacted
    assert r.data(_ev("submitted", "H:1", "resize", b"img2")) == b"img2"
    assert r.data(_ev("completed", "H:1", None, b"done2")) == b"done2"


@override_settings(HQ_REDACT=["billing_*"])
def test_the_writer_hook_gives_events_without_data_but_with_their_size() -> None:
    from jobs.batches import row_of

    r = Redactor()
    submitted = r.event(_ev("submitted", "H:9", "billing_charge", b'{"card": "4111"}'))
    completed = r.event(_ev("completed", "H:9", None, b"charged"))
    assert submitted.data is None and submitted.size == 16 and completed.data is None
    row = row_of(submitted, uuid.uuid4())
    assert row.data_text is None and row.data_bin is None and row.size == 16
    kept = _ev("submitted", "H:10", "resize", b"img")
    assert r.event(kept) is kept


@override_settings(HQ_REDACT=["secret_*"])
def test_the_writer_hook_forgets_the_oldest_when_full() -> None:
    r = Redactor(remember=2)
    for n in range(3):
        r.data(_ev("submitted", f"H:{n}", "secret_x"))
    assert r.data(_ev("completed", "H:0", None, b"r")) == b"r"  # forgotten
    assert r.data(_ev("completed", "H:2", None, b"r")) is None


# ---------------------------------------------------------------- what the API and page show


@pytest.fixture
def billing_job(world: dict[str, Any]) -> Job:
    """A job whose payload was stored (before its function was redacted, say)."""
    return add_job(world["boot"], "H:gm-prod-1:7001", function="billing_charge",
                   payload_text='{"card": "4111 1111 1111 1111"}', payload_size=31,
                   result_text="charged", result_size=7)


@pytest.mark.django_db
@override_settings(HQ_REDACT=["billing_*"])
def test_api_and_page_say_redacted_for_a_redacted_function(
        billing_job: Job, api_operator: APIClient, operator: Client) -> None:
    body = api_operator.get(f"/api/v1/jobs/{billing_job.pk}/").json()
    assert body["payload"] is None and body["result"] is None
    assert body["payload_redacted"] is True and body["payload_hidden"] is False
    assert body["payload_size"] == 31
    listed = api_operator.get("/api/v1/jobs/?function=billing_charge").json()["results"]
    assert listed[0]["payload"] is None and listed[0]["payload_redacted"]
    html = operator.get(f"/jobs/{billing_job.pk}/").content.decode()
    assert "4111" not in html and "charged" not in html
    assert "Redacted" in html and "HQ_REDACT" in html and "not stored" in html


@pytest.mark.django_db
def test_without_redaction_the_payload_shows(billing_job: Job, api_viewer: APIClient) -> None:
    body = api_viewer.get(f"/api/v1/jobs/{billing_job.pk}/").json()
    assert body["payload"].startswith('{"card"') and body["payload_redacted"] is False


@pytest.mark.django_db
@override_settings(HQ_VIEWERS_SEE_PAYLOADS=False)
def test_viewers_can_be_kept_from_payloads(billing_job: Job, api_viewer: APIClient,
                                           api_operator: APIClient, viewer: Client,
                                           vera: AbstractUser, opal: AbstractUser) -> None:
    assert not may_see_payloads(vera) and may_see_payloads(opal)
    seen = api_viewer.get(f"/api/v1/jobs/{billing_job.pk}/").json()
    assert seen["payload"] is None and seen["result"] is None and seen["payload_hidden"]
    html = viewer.get(f"/jobs/{billing_job.pk}/").content.decode()
    assert "4111" not in html and "Hidden" in html
    assert api_operator.get(f"/api/v1/jobs/{billing_job.pk}/").json()["payload"]
    # the search box cannot be used to guess payloads either
    assert api_viewer.get("/api/v1/jobs/?q=4111 1111").json()["results"] == []
    found = api_operator.get("/api/v1/jobs/?q=4111 1111").json()["results"]
    assert [j["id"] for j in found] == [billing_job.pk]
    by_name = api_viewer.get("/api/v1/jobs/?q=billing_ch").json()["results"]
    assert [j["id"] for j in by_name] == [billing_job.pk]
    page = viewer.get("/jobs/?q=4111 1111&state=completed").content.decode()
    assert "H:gm-prod-1:7001" not in page
