"""The web side of job actions (Django's test client): the job page's Retry and Cancel
buttons (and why they are disabled), retry links both ways, the Submit job form (text or
file, run at), the Scheduled filter, and who may do what."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.utils import timezone

from broker.client import ServerAddress
from hq.models import AuditEntry
from jobs.models import Boot, Job, Server
from tests.support.stack import Gearmand, free_port
from tests.support.web import field_errors

if TYPE_CHECKING:
    from django.test import Client
    from rest_framework.test import APIClient


@pytest.fixture
def gm(gearmand: Gearmand, db: None) -> Iterator[Gearmand]:
    with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress("gm-p", "127.0.0.1",
                                                             gearmand.port)]):
        yield gearmand


@pytest.fixture
def boot(db: None) -> Boot:
    server = Server.objects.create(name="gm-p", address="127.0.0.1:1")
    return Boot.objects.create(server=server, token="77", first_seen=timezone.now())


def recorded(boot: Boot, handle: str, **kw: object) -> Job:
    now = timezone.now()
    values: dict[str, object] = {"function": "resize_image", "state": "failed",
                                 "submitted_at": now, "finished_at": now, "updated_at": now,
                                 "payload_text": '{"id": 1}', "payload_size": 9,
                                 "background": True, "priority": "normal"}
    values.update(kw)
    return Job.objects.create(server=boot.server, boot=boot, handle=handle, **values)


def test_the_retry_button_retries_and_the_pages_link_both_ways(
        gm: Gearmand, boot: Boot, operator: Client) -> None:
    failed = recorded(boot, "H:p:1", error="boom")
    page = operator.get(f"/jobs/{failed.pk}/").content.decode()
    assert 'id="retry-button"' in page and "Cannot retry" not in page
    assert 'id="cancel-button" disabled title="Cannot cancel: it has already finished' in page
    form_key = page.split('name="action_key" value="')[1].split('"')[0]
    r = operator.post(f"/jobs/{failed.pk}/retry/", {"action_key": form_key})
    assert r.status_code == 302
    again = Job.objects.get(retry_of=failed)
    assert r["Location"] == f"/jobs/{again.pk}/"
    # a double click posts the same key again: still one retry
    assert operator.post(f"/jobs/{failed.pk}/retry/", {"action_key": form_key})[
        "Location"] == f"/jobs/{again.pk}/"
    assert Job.objects.filter(retry_of=failed).count() == 1
    new_page = operator.get(f"/jobs/{again.pk}/").content.decode()
    assert f"Retried job #{failed.pk} as job #{again.pk}." in new_page
    assert f'id="retry-of-link">job #{failed.pk}</a>' in new_page
    old_page = operator.get(f"/jobs/{failed.pk}/").content.decode()
    assert f'<a href="/jobs/{again.pk}/">job #{again.pk}</a>' in old_page
    entry = AuditEntry.objects.get(action="retry")
    assert (entry.via, entry.username) == ("ui", "opal")


@override_settings(HQ_REDACT=["billing_*"])
def test_a_disabled_retry_says_why(boot: Boot, operator: Client) -> None:
    cases = {
        "H:p:2": ({"payload_text": "x" * 4, "payload_size": 70_000},
                  "its payload was truncated (stored 4 of 70,000 bytes, HQ_PAYLOAD_MAX)"),
        "H:p:3": ({"function": "billing_charge", "payload_text": None},
                  "its payload is not stored (HQ_REDACT)"),
    }
    for handle, (fields, reason) in cases.items():
        job = recorded(boot, handle, **fields)
        page = operator.get(f"/jobs/{job.pk}/").content.decode()
        assert 'id="retry-button" disabled aria-describedby="retry-why"' in page
        assert f"Retry is not possible: {reason}" in page
        r = operator.post(f"/jobs/{job.pk}/retry/", follow=True)
        assert reason in r.content.decode()  # the refusal, shown after the redirect
    assert not Job.objects.filter(retry_of__isnull=False).exists()


def test_viewers_see_no_buttons_and_may_not_post(boot: Boot, viewer: Client) -> None:
    job = recorded(boot, "H:p:4")
    page = viewer.get(f"/jobs/{job.pk}/").content.decode()
    assert "retry-button" not in page and "cancel-button" not in page
    assert viewer.post(f"/jobs/{job.pk}/retry/").status_code == 403
    assert viewer.post(f"/jobs/{job.pk}/cancel/").status_code == 403
    assert viewer.get("/jobs/new/").status_code == 403
    assert 'id="submit-job-link"' not in viewer.get("/jobs/").content.decode()


def test_submit_form_text_file_and_later(gm: Gearmand, operator: Client) -> None:
    page = operator.get("/jobs/new/")
    assert page.status_code == 200
    r = operator.post("/jobs/new/", {"function": "resize_image", "payload": "a\r\nb",
                                     "priority": "high", "mode": "background"})
    assert r.status_code == 302, r.content.decode()[:2000]
    now_job = Job.objects.get(function="resize_image")
    assert (now_job.payload, now_job.priority, now_job.state) == ("a\nb", "high", "queued")
    upload = SimpleUploadedFile("blob.bin", b"\x00\x01\xfe\xff", "application/octet-stream")
    r = operator.post("/jobs/new/", {"function": "blob", "payload_file": upload,
                                     "priority": "normal", "mode": "background"})
    assert r.status_code == 302
    assert Job.objects.get(function="blob").payload == b"\x00\x01\xfe\xff"
    later = (timezone.now() + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S")
    r = operator.post("/jobs/new/", {"function": "report", "payload": "", "unique": "nightly",
                                     "priority": "low", "mode": "background",
                                     "run_at": later})
    assert r.status_code == 302
    held = Job.objects.get(function="report")
    assert (held.state, held.handle, held.unique) == ("scheduled", "", "nightly")
    page = operator.get(r["Location"]).content.decode()
    assert "will be submitted at" in page and "HQ submits it" in page
    listed = operator.get("/jobs/?state=scheduled").content.decode()
    assert f"job #{held.pk}" in listed and "runs in 1 d" in listed
    assert 'class="button scheduled-filter active"' in listed
    assert [e.via for e in AuditEntry.objects.order_by("id")] == ["ui", "ui", "ui"]


@override_settings(HQ_PAYLOAD_MAX=10)
def test_submit_form_errors(operator: Client, db: None) -> None:
    r = operator.post("/jobs/new/", {"function": "", "payload": "x" * 11, "priority": "normal",
                                     "mode": "background"})
    assert r.status_code == 400
    html = r.content.decode()
    assert field_errors(html, "function") == ["This field is required."]
    assert field_errors(html, "payload") == ["11 bytes; HQ_PAYLOAD_MAX allows 10."]
    later = (timezone.now() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    r = operator.post("/jobs/new/", {"function": "f", "mode": "foreground", "run_at": later,
                                     "priority": "normal"})
    assert r.status_code == 400
    assert "A job that runs later must be a background job" in r.content.decode()
    with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress("gm-x", "127.0.0.1",
                                                             free_port())]):
        r = operator.post("/jobs/new/", {"function": "f", "mode": "background",
                                         "priority": "normal"})
    assert r.status_code == 503
    assert "No gearmand accepted the job (gm-x)" in r.content.decode()
    assert not Job.objects.exists()


def test_bulk_pages_count_first_and_are_for_operators(gm: Gearmand, boot: Boot,
                                                      operator: Client,
                                                      viewer: Client) -> None:
    for n in range(3):
        recorded(boot, f"H:p:{100 + n}", unique=f"b-{n}")
    listed = operator.get("/jobs/?state=failed").content.decode()
    assert 'id="bulk-retry"' in listed and 'id="bulk-cancel"' in listed
    assert 'id="bulk-retry"' not in operator.get("/jobs/").content.decode()  # no filter
    assert 'id="bulk-retry"' not in viewer.get("/jobs/?state=failed").content.decode()
    confirm = operator.get("/jobs/bulk/confirm/?action=retry&state=failed&function="
                           "resize_image").content.decode()
    assert "Retry 3 failed `resize_image` jobs?" in confirm
    assert 'name="state" value="failed"' in confirm
    none = operator.get("/jobs/bulk/confirm/?action=cancel&state=lost").content.decode()
    assert "No job matches these filters" in none
    assert viewer.get("/jobs/bulk/confirm/?action=retry&state=failed").status_code == 403
    assert viewer.post("/jobs/bulk/", {"action": "retry", "state": "failed"}).status_code == 403
    r = operator.post("/jobs/bulk/", {"action": "retry", "state": "failed",
                                      "function": "resize_image"})
    assert r.status_code == 302 and r["Location"].startswith("/bulk/")
    page = operator.get(r["Location"]).content.decode()
    assert "Retry 3 failed resize_image jobs" in page and 'data-state="running"' in page
    assert viewer.get(r["Location"]).status_code == 200  # anyone may watch it


def test_priority_and_background_filters(boot: Boot, api_viewer: APIClient) -> None:
    recorded(boot, "H:p:200", priority="high", background=True)
    recorded(boot, "H:p:201", priority="low", background=False)
    recorded(boot, "H:p:202", priority="normal", background=True)

    def handles(query: str) -> list[str]:
        r = api_viewer.get(f"/api/v1/jobs/?{query}")
        assert r.status_code == 200, r.json()
        return sorted(j["handle"] for j in r.json()["results"])

    assert handles("priority=high") == ["H:p:200"]
    assert handles("background=false") == ["H:p:201"]
    assert handles("background=true&priority=normal") == ["H:p:202"]
    for query, field in (("priority=urgent", "priority"), ("background=maybe", "background")):
        r = api_viewer.get(f"/api/v1/jobs/?{query}")
        assert r.status_code == 400 and field in r.json()["error"]["fields"]
    from jobs import bulk
    assert bulk.describe("retry", 2, {"state": "failed", "priority": "high",
                                      "background": "true"}) == (
        "Retry 2 background high-priority failed jobs?")
