"""A real Chromium on the monitoring pages: rows change without a reload, charts draw.

pytest-django's live server speaks WSGI, so ``/ws/live/`` cannot connect there. Each test
stands in for it with Playwright's websocket routing (the page's ``live.js`` talks to a
scripted server, ``fake_live.FakeLive``), which also lets a test prove that a websocket
message alone refreshes the page; the other test keeps the socket closed and relies on the
polling fallback.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from monitoring.models import ServerState
from tests.browser.fake_live import FakeLive
from tests.support.users import PASSWORD
from tests.support.worlds import snap

pytestmark = [pytest.mark.browser]


@pytest.fixture
def signed_in(live_server, transactional_db, page, sign_in, vera, world):  # type: ignore[no-untyped-def]
    """The monitoring world, and vera (a viewer) signed in to it; returns the world."""
    sign_in("vera", PASSWORD)
    return world


def _queued_cell(page, function: str):  # type: ignore[no-untyped-def]
    return page.locator(f'tr.queue-row[data-function="{function}"] td.queued')


def test_overview_rows_change_without_reload_by_polling(live_server, page, signed_in,
                                                        artifacts):
    live = FakeLive(page, accept=False)  # the websocket is down: polling must carry on
    page.goto(live_server.url + "/?poll=1")
    assert page.locator("h1").inner_text() == "Overview"
    row = page.locator('tr.queue-row[data-function="resize_image"]')
    assert row.is_visible()
    assert _queued_cell(page, "resize_image").inner_text() == "4"
    assert page.locator("tr.row-backed-up").get_attribute("data-function") == "send_email"
    assert page.locator("tr.row-no-workers").get_attribute("data-function") == "transcode_video"
    assert page.locator(".server-card.server-up .up-badge").inner_text().strip() == "UP"
    assert page.locator(".server-card.server-down .up-badge").inner_text().strip() == "DOWN"
    page.screenshot(path=artifacts / "overview.png", full_page=True)

    page.evaluate("window.__sameDocument = true")
    snap(signed_in["prod"], "resize_image", 321, running=3, workers=4)
    ServerState.objects.filter(server=signed_in["spare"]).update(
        up=True, down_since=None, polled_at=timezone.now(), last_error="",
        started_at=timezone.now() - timedelta(minutes=1))
    page.wait_for_function(
        """() => document.querySelector('tr[data-function="resize_image"] td.queued')
                   .innerText.trim() === '321'""", timeout=10_000)
    page.locator('.server-card[data-server="gm-spare"].server-up').wait_for(timeout=10_000)
    assert page.evaluate("window.__sameDocument") is True  # updated in place, no reload
    status = page.locator("[data-hq-live-status]")
    assert status.get_attribute("data-state") == "reconnecting"
    assert "refreshes every 1 s" in status.get_attribute("title")
    assert live.sockets == []
    page.screenshot(path=artifacts / "overview-updated.png", full_page=True)

    # A phone: the servers' state and the flagged queues still come first.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.locator(".attention").is_visible()
    page.screenshot(path=artifacts / "overview-phone.png", full_page=True)


def test_a_websocket_message_refreshes_the_overview(live_server, page, signed_in):
    live = FakeLive(page)
    page.goto(live_server.url + "/?poll=300")  # the poll cannot be what refreshes it
    status = page.locator('[data-hq-live-status][data-state="live"]')
    status.wait_for()
    assert status.inner_text().strip() == "Live"
    page.evaluate("window.__sameDocument = true")

    snap(signed_in["prod"], "send_email", 777, running=2, workers=2)
    live.send({"type": "alert", "function": "send_email"})  # overview ignores alerts
    live.send({"type": "queue", "server": "gm-prod-1", "at": 1.0, "functions": ["send_email"]})
    page.wait_for_function(
        """() => document.querySelector('tr[data-function="send_email"] td.queued')
                   .innerText.trim() === '777'""", timeout=5_000)
    assert page.evaluate("window.__sameDocument") is True

    # The server goes away: the dot says so, and live.js connects again by itself.
    live.sockets[-1].close(code=1012, reason="restart")
    page.locator('[data-hq-live-status][data-state="reconnecting"]').wait_for()
    page.locator('[data-hq-live-status][data-state="live"]').wait_for(timeout=10_000)
    assert len(live.sockets) == 2


def test_queue_page_draws_charts_and_lists_failures(live_server, page, signed_in, artifacts):
    live = FakeLive(page)
    page.goto(live_server.url + "/queues/resize_image/?range=1h")
    assert page.locator("#queue-function").inner_text() == "resize_image"
    assert page.locator(".range-picker a.active").inner_text() == "1h"
    page.wait_for_function("document.querySelectorAll('.chart[data-drawn] canvas').length === 5")
    for name in ("depth", "throughput", "runtime", "wait", "failure"):
        canvas = page.locator(f'[data-chart="{name}"] canvas')
        box = canvas.bounding_box()
        assert box and box["width"] > 200 and box["height"] > 100, name
    legend = page.locator('[data-chart="throughput"] .u-legend').inner_text()
    assert "Submitted" in legend and "Completed" in legend and "Failed" in legend
    runtime = page.locator('[data-chart="runtime"] .u-legend').inner_text()
    assert "p50" in runtime and "p95" in runtime and "p99" in runtime
    # the canvas has ink on it (not a blank chart)
    painted = page.evaluate("""() => {
        const c = document.querySelector('[data-chart="throughput"] canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
        return n; }""")
    assert painted > 1000

    # Not hovering, the legends show the newest point; hovering a chart shows the values
    # under the cursor in every chart's legend (the cursors are synchronised).
    depth_now = page.locator('[data-chart="depth"] .u-legend .u-series:nth-child(2) .u-value')
    assert depth_now.inner_text().strip() == "4"
    box = page.locator('[data-chart="throughput"] .u-over').bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
    completed = page.locator('[data-chart="throughput"] .u-legend .u-series:nth-child(3) .u-value')
    assert re.fullmatch(r"\d+(\.\d+)?k?", completed.inner_text().strip())
    p95 = page.locator('[data-chart="runtime"] .u-legend .u-series:nth-child(3) .u-value')
    assert re.fullmatch(r"[\d.]+ (ms|s)", p95.inner_text().strip())
    page.screenshot(path=artifacts / "queue-detail.png", full_page=True)

    failures = page.locator(".failures-table tbody tr")
    assert failures.count() == 3
    assert "Imagick: corrupt JPEG data" in failures.nth(0).inner_text()
    assert live.received == [{"subscribe": {"function": "resize_image"}}]

    # A live refresh keeps the drawn charts (same canvas) and feeds them the new data.
    page.evaluate("document.querySelector('[data-chart=\"depth\"] canvas').__kept = true")
    snap(signed_in["prod"], "resize_image", 450, running=3, workers=4)
    live.send({"type": "queue", "server": "gm-prod-1", "functions": ["resize_image"]})
    page.wait_for_function(
        "document.querySelector('[data-now=\"queued\"]').innerText.trim() === '450'")
    page.wait_for_function("Math.max(...window.hqCharts.depth.data[1]) === 450")
    assert page.evaluate("document.querySelector('[data-chart=\"depth\"] canvas').__kept")

    # Empty states, and another range.
    page.goto(live_server.url + "/queues/nightly_report/?range=7d")
    assert page.locator(".chart-card.is-empty").first.is_visible()
    assert "No jobs in this range." in page.locator(".charts").inner_text()
    page.screenshot(path=artifacts / "queue-empty.png", full_page=True)


def test_workers_page(live_server, page, signed_in, artifacts):
    FakeLive(page)
    page.goto(live_server.url + "/workers/")
    rows = page.locator("tr.worker-row")
    assert rows.count() == 3
    busy = page.locator("tr.worker-row.is-busy")
    assert busy.count() == 1
    assert busy.locator(".badge").inner_text().strip().lower() == "busy"
    link = busy.locator("a.handle-link")
    assert link.inner_text() == "H:gm-prod-1:4711"
    assert page.locator("tr.worker-row.is-idle .badge-idle").count() == 2
    page.screenshot(path=artifacts / "workers.png", full_page=True)
    link.click()
    page.wait_for_url(re.compile(rf"/jobs/{signed_in['running'].pk}/$"))


def test_unknown_queue_and_bad_range(live_server, page, signed_in, artifacts):
    FakeLive(page)
    page.goto(live_server.url + "/queues/never_heard_of_it/")
    assert "has not seen a queue called" in page.locator(".empty h2").inner_text()
    response = page.goto(live_server.url + "/queues/resize_image/?range=2y")
    assert response.status == 400
    assert "unknown range" in page.locator(".alert-error").inner_text()
    page.screenshot(path=artifacts / "queue-bad-range.png")
