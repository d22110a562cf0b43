"""A real Chromium retries a failed job from its page (gearmand, HQ's capture tap and a PHP
worker behind it), follows the links between the two jobs, submits a job for later from
the Submit job form, finds it under "Scheduled" and cancels it. Screenshots go to
``test-artifacts/job-actions-*.png``."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from broker.client import ServerAddress
from jobs import services
from jobs.models import Boot, Job
from tests.interop.php_scripts import php_worker
from tests.support.stack import start_tap, wait_for
from tests.support.users import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.gearmand]


def _settled(job_id: int, state: str) -> Job:
    def done() -> Job | None:
        services.link_pending()
        job = Job.objects.filter(pk=job_id, state=state).first()
        return job if job is not None and job.boot_id else None

    return wait_for(done, message=f"job {job_id} recorded as {state}")


def test_retry_from_the_job_page(live_server, transactional_db, page, sign_in, artifacts,
                                 opal, gearmand, tmp_path):
    tap = start_tap("capture", gearmand, tmp_path)
    try:
        with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress(tap.server, "127.0.0.1",
                                                                 tap.port)]), \
                php_worker(tap, "w-1", ("fail",), log=tmp_path / "w.log"):
            first = services.submit(function="fail", payload=b'{"invoice": 4711}',
                                    unique="invoice-4711", user=opal, via="api").job
            failed = _settled(first.pk, "failed")
            sign_in("opal", PASSWORD)
            page.goto(f"{live_server.url}/jobs/{failed.pk}/")
            retry = page.locator("#retry-button")
            assert retry.is_enabled()
            page.screenshot(path=artifacts / "job-actions-failed.png", full_page=True)
            retry.click()
            page.wait_for_url(re.compile(r"/jobs/(\d+)/$"))
            new_id = int(re.search(r"/jobs/(\d+)/$", page.url).group(1))
            assert new_id != failed.pk
            assert f"Retried job #{failed.pk} as job #{new_id}." in page.locator(
                ".flash-stack").inner_text()
            again = _settled(new_id, "failed")
            assert (again.retry_of_id, again.payload, again.unique) == (
                failed.pk, '{"invoice": 4711}', "invoice-4711")
            page.reload()
            assert page.locator("#job-handle").inner_text() == again.handle
            assert page.locator("#retry-of-link").inner_text() == f"job #{failed.pk}"
            page.screenshot(path=artifacts / "job-actions-retried.png", full_page=True)
            page.click("#retry-of-link")
            page.wait_for_url(re.compile(rf"/jobs/{failed.pk}/$"))
            assert f"job #{new_id}" in page.locator(".retried-by").inner_text()
    finally:
        tap.stop()


def test_a_retry_that_cannot_be_says_why(live_server, transactional_db, page, sign_in,
                                         artifacts, opal):
    from jobs.models import Server

    server = Server.objects.create(name="gm-prod-1", address="10.0.4.12:4730")
    boot = Boot.objects.create(server=server, token="31337", first_seen=timezone.now())
    now = timezone.now()
    job = Job.objects.create(
        server=server, boot=boot, handle="H:gm-prod-1:9001", function="transcode_video",
        state="failed", submitted_at=now - timedelta(minutes=3), finished_at=now,
        updated_at=now, payload_text="x" * 200, payload_size=2_000_000, background=True,
        error="RuntimeError: ffmpeg exited with status 1", attempts=1)
    sign_in("opal", PASSWORD)
    page.goto(f"{live_server.url}/jobs/{job.pk}/")
    assert page.locator("#retry-button").is_disabled()
    assert "stored 200 of 2,000,000 bytes" in page.locator("#retry-why").inner_text()
    assert page.locator("#cancel-button").is_disabled()
    page.screenshot(path=artifacts / "job-actions-cannot-retry.png", full_page=True)


def test_submit_for_later_find_it_under_scheduled_and_cancel_it(
        live_server, transactional_db, page, sign_in, artifacts, opal, gearmand):
    with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress("gm-prod-1", "127.0.0.1",
                                                             gearmand.port)]):
        sign_in("opal", PASSWORD)
        page.goto(f"{live_server.url}/jobs/")
        page.click("#submit-job-link")
        page.wait_for_url(re.compile(r"/jobs/new/$"))
        page.fill("#id_function", "nightly_report")
        page.fill("#id_payload", '{"day": "yesterday"}')
        page.select_option("#id_priority", "low")
        later = (timezone.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
        page.fill("#id_run_at", later)
        page.screenshot(path=artifacts / "job-actions-submit.png", full_page=True)
        page.click("#submit-job")
        page.wait_for_url(re.compile(r"/jobs/\d+/$"))
        assert "will be submitted at" in page.locator(".flash-stack").inner_text()
        assert page.locator(".job-head .badge").inner_text().strip().lower() == "scheduled"
        page.screenshot(path=artifacts / "job-actions-scheduled-job.png", full_page=True)
        page.goto(f"{live_server.url}/jobs/")
        page.click("#scheduled-filter")
        page.wait_for_url(re.compile(r"/jobs/\?state=scheduled$"))
        assert page.locator("table.jobs tbody tr").count() == 1
        assert "runs in" in page.locator("table.jobs tbody tr").inner_text()
        page.screenshot(path=artifacts / "job-actions-scheduled-list.png", full_page=True)
        page.locator("table.jobs tbody tr a").first.click()
        page.wait_for_url(re.compile(r"/jobs/\d+/$"))
        page.click("#cancel-button")
        page.wait_for_selector(".flash-stack")
        assert "is cancelled" in page.locator(".flash-stack").inner_text()
        assert page.locator(".job-head .badge").inner_text().strip().lower() == "cancelled"
    assert Job.objects.get(function="nightly_report").state == "cancelled"


def test_a_recurring_schedule_shows_its_next_runs_as_you_type(
        live_server, transactional_db, page, sign_in, artifacts, opal):
    from jobs.models import Schedule

    sign_in("opal", PASSWORD)
    page.goto(f"{live_server.url}/schedules/")
    page.fill("#id_name", "Nightly report")
    page.fill("#id_function", "nightly_report")
    page.fill("#id_timezone", "Europe/Berlin")
    page.locator("#id_cron").press_sequentially("0 3 * *", delay=20)
    page.wait_for_selector(".next-runs-error")
    assert "5 fields" in page.locator(".next-runs-error").inner_text()
    page.locator("#id_cron").press_sequentially(" mon-fri", delay=20)
    page.wait_for_function("document.querySelectorAll('.next-runs li').length === 5")
    runs = page.locator(".next-runs li").all_inner_texts()
    assert all(" 03:00 " in r and "Europe/Berlin" in r for r in runs), runs
    assert not any(r.startswith(("Sat", "Sun")) for r in runs), runs
    page.select_option("#id_overlap", "skip")
    page.screenshot(path=artifacts / "job-actions-schedule-form.png", full_page=True)
    page.click("#save-schedule")
    page.wait_for_url(re.compile(r"/schedules/\d+/$"))
    assert "created" in page.locator(".flash-stack").inner_text()
    schedule = Schedule.objects.get(name="Nightly report")
    assert (schedule.cron, schedule.timezone, schedule.overlap) == (
        "0 3 * * mon-fri", "Europe/Berlin", "skip")
    page.wait_for_function("document.querySelectorAll('.next-runs li').length === 5")
    page.screenshot(path=artifacts / "job-actions-schedule-detail.png", full_page=True)
    page.goto(f"{live_server.url}/schedules/")
    assert "Nightly report" in page.locator("table.schedules").inner_text()
    page.screenshot(path=artifacts / "job-actions-schedules.png", full_page=True)


def test_bulk_retry_with_its_count_and_a_progress_bar(
        live_server, transactional_db, page, sign_in, artifacts, opal, gearmand):
    from jobs import bulk
    from jobs.models import BulkAction, Server

    server = Server.objects.create(name="gm-prod-1", address="10.0.4.12:4730")
    boot = Boot.objects.create(server=server, token="31337", first_seen=timezone.now())
    at = timezone.now() - timedelta(minutes=20)
    Job.objects.bulk_create([
        Job(server=server, boot=boot, handle=f"H:gm-prod-1:{n}", function="resize_image",
            unique=f"img-{n}", state="failed" if n < 450 else "completed",
            submitted_at=at, finished_at=at, updated_at=at, payload_text=f'{{"id": {n}}}',
            payload_size=len(f'{{"id": {n}}}'), background=True, priority="normal",
            error="Imagick: corrupt JPEG data") for n in range(500)])
    with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress("gm-prod-1", "127.0.0.1",
                                                             gearmand.port)]):
        sign_in("opal", PASSWORD)
        page.goto(f"{live_server.url}/jobs/?state=failed&function=resize_image")
        page.click("#bulk-retry")
        page.wait_for_selector("#bulk-question")
        assert page.locator("#bulk-question").inner_text() == (
            "Retry 450 failed `resize_image` jobs?")
        page.screenshot(path=artifacts / "job-actions-bulk-confirm.png", full_page=True)
        page.click("#bulk-go")
        page.wait_for_url(re.compile(r"/bulk/\d+/$"))
        action = BulkAction.objects.get()
        assert page.locator("#bulk-progress").get_attribute("data-state") == "running"
        claimed = BulkAction.objects.filter(pk=action.pk)
        assert bulk.run_batch(claimed.get()) == 200  # one batch, as one scheduler tick would
        page.wait_for_function("document.querySelector('#bulk-done').textContent === '200'")
        page.reload()  # the progress survives a reload: it is in the database
        assert page.locator("#bulk-done").inner_text() == "200"
        assert page.locator(".bulk-bar").get_attribute("aria-valuenow") == "200"
        page.screenshot(path=artifacts / "job-actions-bulk-progress.png", full_page=True)
        while claimed.get().state == "running":
            bulk.run_batch(claimed.get())
        # (htmx settles the class a moment after the swap)
        page.wait_for_function(
            "document.querySelector('#bulk-progress').classList.contains('bulk-done')")
        assert page.locator("#bulk-done").inner_text() == "450"
        page.screenshot(path=artifacts / "job-actions-bulk-done.png", full_page=True)
    assert Job.objects.filter(retry_of__isnull=False).count() == 450
