"""A real Chromium signs in, finds a job by typing its handle, and reads its page."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import Boot, Job, JobEvent, Server
from tests.support.users import PASSWORD

pytestmark = [pytest.mark.browser]


def _job(boot: Boot, handle: str, submitted, **fields) -> Job:
    values = {"function": "resize_image", "state": "completed", "background": True,
              "priority": "normal", "attempts": 1, "updated_at": submitted}
    values.update(fields)
    return Job.objects.create(server=boot.server, boot=boot, handle=handle,
                              submitted_at=submitted, **values)


def _event(job: Job, kind: str, at, **fields) -> None:
    JobEvent.objects.create(id=uuid.uuid4(), at=at, server=job.server, boot=job.boot,
                            handle=job.handle, kind=kind, **fields)


def _world() -> Job:
    """A server with a dozen jobs in every state; returns the failed one with a history."""
    now = timezone.now()
    server = Server.objects.create(name="gm-prod-1", address="10.0.4.12:4730")
    boot = Boot.objects.create(server=server, token="31337", first_seen=now - timedelta(days=3))
    specs = [
        ("send_welcome_email", "completed", 8, 41, "php-mailer-2"),
        ("resize_image", "running", None, None, "img-worker-7"),
        ("resize_image", "queued", None, None, ""),
        ("generate_invoice_pdf", "completed", 35, 2310, "billing-1"),
        ("sync_crm_contact", "lost", 120, None, "crm-3"),
        ("nightly_report", "scheduled", None, None, ""),
        ("send_welcome_email", "cancelled", None, None, ""),
        ("generate_invoice_pdf", "completed", 3, 1870, "billing-2"),
        ("resize_image", "failed", 2, 600, "img-worker-3"),
        ("index_document", "completed", 15, 95_000, "search-idx-1"),
    ]
    for n, (function, state, wait, runtime, worker) in enumerate(specs, start=1000):
        errors = {"failed": "Imagick: corrupt JPEG data", "lost": "gearmand restarted"}
        _job(boot, f"H:gm-prod-1:{n}", now - timedelta(minutes=90 - n % 100), function=function,
             state=state, wait_ms=wait, runtime_ms=runtime, worker=worker,
             error=errors.get(state, ""))

    t0 = now - timedelta(minutes=4)
    job = _job(
        boot, "H:gm-prod-1:4711", t0, function="transcode_video", unique="video-8812-720p",
        state="failed", priority="high", wait_ms=230, runtime_ms=151_400, attempts=2,
        worker="ffmpeg-worker-4", progress_numerator=62, progress_denominator=100,
        started_at=t0 + timedelta(seconds=35), finished_at=t0 + timedelta(seconds=186.4),
        payload_text='{"video_id": 8812, "profile": "720p", "source": "s3://media/in/8812.mov"}',
        payload_size=76, result_bin=b"\x1f\x8b\x08\x00partial\x00\xff", result_size=64,
        error="RuntimeError: ffmpeg exited with status 1\n"
              "  [h264 @ 0x55d2] error while decoding MB 41 22",
    )
    _event(job, "submitted", t0, conn="10.0.4.20:51544")
    _event(job, "started", t0 + timedelta(milliseconds=230), worker="ffmpeg-worker-2")
    _event(job, "status", t0 + timedelta(seconds=20), worker="ffmpeg-worker-2",
           numerator=40, denominator=100)
    _event(job, "worker_lost", t0 + timedelta(seconds=30), worker="ffmpeg-worker-2",
           detail="connection closed mid-job; gearmand requeued it")
    _event(job, "started", t0 + timedelta(seconds=35), worker="ffmpeg-worker-4")
    _event(job, "data", t0 + timedelta(seconds=90), worker="ffmpeg-worker-4",
           data_text="frame=1800 fps=59 time=00:01:00", size=31)
    _event(job, "status", t0 + timedelta(seconds=120), worker="ffmpeg-worker-4",
           numerator=62, denominator=100)
    _event(job, "exception", t0 + timedelta(seconds=186.4), worker="ffmpeg-worker-4",
           detail="RuntimeError: ffmpeg exited with status 1")
    return job


def test_type_a_handle_land_on_the_job(live_server, transactional_db, page, artifacts, opal):
    job = _world()

    page.goto(live_server.url + "/jobs/")
    assert re.search(r"/login/\?next=/jobs/$", page.url)
    page.screenshot(path=artifacts / "login.png")
    page.fill("#id_username", "opal")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/jobs/$"))
    assert page.locator("table.jobs tbody tr").count() == 11
    assert page.locator(".who").inner_text().lower().count("operator") == 1
    page.screenshot(path=artifacts / "jobs-list.png", full_page=True)

    # Filtering by state re-renders the results in place and keeps the URL clean.
    page.select_option("select[name=state]", "failed")
    page.wait_for_url(re.compile(r"/jobs/\?state=failed$"))
    page.wait_for_function("document.querySelectorAll('table.jobs tbody tr').length === 2")
    page.select_option("select[name=state]", "")
    page.wait_for_function("document.querySelectorAll('table.jobs tbody tr').length === 11")

    # "/" focuses the search box; typing a handle finds it live; Enter opens it.
    page.locator("h1").click()
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type(job.handle, delay=15)
    page.wait_for_selector(".exact-hit")
    assert page.url.endswith("/jobs/?q=H%3Agm-prod-1%3A4711")
    page.screenshot(path=artifacts / "jobs-search.png")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(rf"/jobs/{job.pk}/$"))

    badge = page.locator(".job-head .badge")
    assert badge.is_visible() and badge.inner_text().strip().lower() == "failed"
    assert page.locator("#job-handle").inner_text() == job.handle
    assert page.locator(".error-panel").is_visible()
    assert "ffmpeg exited with status 1" in page.locator(".error-panel").inner_text()
    items = page.locator("#timeline .tl-item")
    assert items.count() == 8
    assert items.first.is_visible() and items.last.is_visible()
    kinds = [items.nth(i).get_attribute("data-kind") for i in range(items.count())]
    assert kinds == ["submitted", "started", "status", "worker_lost", "started", "data",
                     "status", "exception"]
    assert "Truncated: showing 13 of 64 bytes." in page.content()
    page.screenshot(path=artifacts / "job-detail.png", full_page=True)

    # From any page the header box searches too.
    page.locator("h1").click()
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "global-search"
    other = Job.objects.get(handle="H:gm-prod-1:1001")
    page.keyboard.type(other.handle)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(rf"/jobs/{other.pk}/$"))
    assert page.locator(".job-head .badge").inner_text().strip().lower() == "running"


def test_errors_and_empty_states_read_well(live_server, transactional_db, page, sign_in,
                                           artifacts, vera):
    _world()
    sign_in("vera", PASSWORD)

    # An invalid filter in the URL: a 400 page that says what is wrong.
    response = page.goto(live_server.url + "/jobs/?submitted_after=yesterday")
    assert response.status == 400
    assert "not an ISO 8601 time" in page.locator(".alert-error").inner_text()
    page.screenshot(path=artifacts / "jobs-invalid.png")

    # An invalid search typed live: htmx swaps the 400 partial in (not silently dropped).
    page.goto(live_server.url + "/jobs/")
    page.fill("#q", "x" * 500)
    page.press("#q", "y")
    page.wait_for_selector(".alert-error")
    assert "q is too long" in page.locator(".alert-error").inner_text()

    # Nothing found.
    page.goto(live_server.url + "/jobs/?q=H%3Anowhere%3A1")
    assert "No jobs match “H:nowhere:1”" in page.locator(".empty h2").inner_text()
    page.screenshot(path=artifacts / "jobs-empty.png")

    # An unknown job.
    response = page.goto(live_server.url + "/jobs/987654/")
    assert response.status == 404
    assert "No job with id 987654" in page.locator(".error-page").inner_text()
    page.screenshot(path=artifacts / "job-404.png")

    # A phone-sized screen still shows the job's state first.
    page.set_viewport_size({"width": 390, "height": 844})
    job = Job.objects.get(handle="H:gm-prod-1:4711")
    page.goto(live_server.url + f"/jobs/{job.pk}/")
    assert page.locator(".job-head .badge").is_visible()
    page.screenshot(path=artifacts / "job-detail-phone.png", full_page=True)
