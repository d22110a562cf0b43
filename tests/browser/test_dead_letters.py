"""A real Chromium follows a retry chain and works the dead-letter list: a PHP client submits
a background job straight to gearmand, a PHP worker fails it, HQ's policy (2 runs) retries
it once — the job page says "Attempt 1 of 2, next in … s" — then it is a dead letter; the
Dead letters page lists it and Requeue sends it again, and a working worker completes it.
Screenshots go to ``test-artifacts/dead-letters-*.png``."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from broker.client import ServerAddress
from jobs import scheduler, services
from jobs.models import Job
from jobs.recovery import engine, policies
from tests.interop.php_scripts import php_client, php_worker
from tests.support.gearman_cli import start_worker, stop_worker
from tests.support.stack import jobs_of, start_tap, wait_for
from tests.support.users import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.gearmand]


def _failed(server: str, count: int) -> list[Job]:
    def ready() -> list[Job] | None:
        services.link_pending()
        rows = list(jobs_of(server).filter(state="failed", boot__isnull=False))
        return rows if len(rows) >= count else None

    return wait_for(ready, message=f"{count} failed jobs")


def test_retry_chain_and_dead_letter_requeue(live_server, transactional_db, page, sign_in,
                                             artifacts, opal, gearmand, tmp_path,
                                             monkeypatch):
    monkeypatch.setattr(engine, "GRACE", timedelta(0))
    tap = start_tap("capture", gearmand, tmp_path)
    try:
        with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress(tap.server, "127.0.0.1",
                                                                 tap.port)]):
            policies.create(data={"function": "fail", "max_attempts": 2,
                                  "backoff_base_s": 40, "backoff_max_s": 600,
                                  "retry_on": ["failed"]}, user=None, via="cli")
            with php_worker(tap, "w-1", ("fail",), log=tmp_path / "w.log"):
                php_client(tap.port, "background", "fail", '{"invoice": 4711}')
                (first,) = _failed(tap.server, 1)
                now = timezone.now()
                assert engine.sweep(now=now).retried == 1
                sign_in("opal", PASSWORD)
                page.goto(f"{live_server.url}/jobs/{first.pk}/")
                heading = page.locator("#retry-chain h2").inner_text()
                assert re.match(r"Attempt 1 of 2, next in (3\d|40) s", heading), heading
                page.screenshot(path=artifacts / "dead-letters-chain.png", full_page=True)
                assert scheduler.submit_due(now=now + timedelta(seconds=40)).submitted == 1
                _failed(tap.server, 2)
                assert engine.sweep(now=now + timedelta(seconds=40)).dead == 1
            last = Job.objects.get(dead=True)
            assert last.retry_of_id == first.pk
            page.goto(f"{live_server.url}/jobs/{last.pk}/")
            assert page.locator("#retry-chain h2").inner_text().startswith(
                "Attempt 2 of 2 — dead letter")
            page.click("nav.nav >> text=Dead letters")
            page.wait_for_url(re.compile(r"/dead-letters/$"))
            row = page.locator(f"#dead-table tr[data-job='{last.pk}']")
            assert '{"invoice": 4711}' in row.inner_text()
            assert row.locator("td").nth(4).inner_text().strip() == "2"
            page.screenshot(path=artifacts / "dead-letters-list.png", full_page=True)
            worker = start_worker(tap.port, "fail", "cat")  # now it works
            try:
                row.locator(".requeue-button").click()
                page.wait_for_url(re.compile(r"/dead-letters/$"))
                flash = page.locator(".flash-stack").inner_text()
                new_id = int(re.search(r"as job #(\d+)", flash).group(1))
                assert page.locator("#no-dead").is_visible()
                page.screenshot(path=artifacts / "dead-letters-requeued.png", full_page=True)

                def completed() -> Job | None:
                    services.link_pending()
                    return Job.objects.filter(pk=new_id, state="completed").first()

                done = wait_for(completed, message="the requeued job completed")
            finally:
                stop_worker(worker)
            assert done.result == '{"invoice": 4711}' and done.retry_of_id == last.pk
            page.goto(f"{live_server.url}/jobs/{last.pk}/")
            assert "Requeued from the dead letters" in page.locator("#retry-chain").inner_text()
            page.screenshot(path=artifacts / "dead-letters-after.png", full_page=True)
            page.click("nav.nav >> text=Retries")
            page.wait_for_url(re.compile(r"/retry-policies/$"))
            assert page.locator("#policy-table tbody tr").count() == 1
            assert "never retries it behind its client" in page.locator(
                "#foreground-note").inner_text()
            page.screenshot(path=artifacts / "dead-letters-policies.png", full_page=True)
    finally:
        tap.stop()
