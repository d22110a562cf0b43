"""A real Chromium reads the history of a job that survived a gearmand restart: a PHP client
queues a background job straight to gearmand (its queue in Postgres, no worker), gearmand
restarts and gives it back under a new handle, a PHP worker completes it. The new job's
page says "Survived a gearmand restart at …" and links the earlier record, whose page says
restored (not lost) and links back. Screenshots ``test-artifacts/restored-*.png``."""

from __future__ import annotations

import pytest

from jobs.models import Job
from tests.interop.php_scripts import php_client, php_worker
from tests.interop.test_restored_jobs import queue_options, warm_up
from tests.support.stack import jobs_of, start_tap, wait_for
from tests.support.users import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.gearmand]


def test_restored_job_page_shows_one_history(live_server, transactional_db, page, sign_in,
                                             artifacts, vera, gearmand_factory, tmp_path):
    g = gearmand_factory(*queue_options())
    tap = start_tap("capture", g, tmp_path)
    try:
        warm_up(g, "restore_warm")
        php_client(g.port, "background", "reverse", "survive me")
        old = wait_for(lambda: jobs_of(tap.server).filter(function="reverse",
                                                          state="queued").first(),
                       message="the queued job")
        g.restart()
        with php_worker(tap, "w-1", ("reverse",), log=tmp_path / "w.log"):
            new = wait_for(lambda: Job.objects.filter(restored_from=old.pk,
                                                      state="completed").first(),
                           timeout=30, message="the restored job completed and linked")
        assert new.result == "em evivrus"
        sign_in("vera", PASSWORD)
        page.goto(f"{live_server.url}/jobs/{new.pk}/")
        panel = page.locator("#restart-history")
        assert "Survived a gearmand restart" in panel.locator("h2").inner_text()
        assert "survived a gearmand restart at" in panel.inner_text()
        page.screenshot(path=artifacts / "restored-new.png", full_page=True)
        panel.locator(f'a[href="/jobs/{old.pk}/"]').click()
        page.wait_for_url(f"**/jobs/{old.pk}/")
        assert page.locator(".job-head [data-state]").get_attribute("data-state") == "restored"
        assert new.handle in page.locator("#restart-history").inner_text()
        assert page.locator(f'#restart-history a[href="/jobs/{new.pk}/"]').count() == 1
        page.screenshot(path=artifacts / "restored-old.png", full_page=True)
    finally:
        tap.stop()
