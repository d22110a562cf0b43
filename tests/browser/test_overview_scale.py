"""A real Chromium on the overview of a big HQ (20 servers × 500 functions,
``tests.support.scale_world``) at 1440×900: what needs attention is on the first screen,
the filter narrows the table and survives live refreshes, idle queues unfold on request,
and an operator retires a server nothing polls."""

from __future__ import annotations

import pytest

from tests.browser.fake_live import FakeLive
from tests.support.scale_world import STALE, build_scale_world
from tests.support.users import PASSWORD
from tests.support.worlds import snap

pytestmark = [pytest.mark.browser]


@pytest.fixture
def big(transactional_db):  # type: ignore[no-untyped-def]
    return build_scale_world()


def _functions(page) -> list[str]:  # type: ignore[no-untyped-def]
    return page.eval_on_selector_all(
        "tr.queue-row", "rows => rows.map(r => r.dataset.function + '@' + r.dataset.server)")


def test_the_first_screen_reads_at_a_glance(live_server, page, big, sign_in, vera, artifacts):
    sign_in("vera", PASSWORD)
    live = FakeLive(page)
    page.goto(live_server.url + "/?poll=300")  # only the websocket refreshes it
    page.locator('[data-hq-live-status][data-state="live"]').wait_for()
    page.screenshot(path=artifacts / "overview-scale.png")
    page.screenshot(path=artifacts / "overview-scale-full.png", full_page=True)
    # the state in one look, without scrolling: the strip, the banner, the sick servers,
    # and the queues that need attention at the top of the table
    assert page.locator(".attention").is_visible()
    assert "6 queues need attention" in page.locator(".attention").inner_text()
    first = page.locator("tr.queue-row").first
    assert first.get_attribute("data-function") == "ocr_07"
    box = page.locator("tr.queue-row").nth(4).bounding_box()
    assert box is not None and box["y"] + box["height"] <= 900, box
    assert page.locator(".server-card").first.get_attribute("data-status") == "down"

    # the filter narrows the table (and the servers) as one types
    page.evaluate("window.__sameDocument = true")
    page.fill("#overview-q", "resize_00")
    page.wait_for_function("""() => [...document.querySelectorAll('tr.queue-row')]
        .every(r => r.dataset.function === 'resize_00')""", timeout=10_000)
    assert len(_functions(page)) == 19  # busy on every server but the retired one
    assert "q=resize_00" in page.url

    # a live refresh keeps it: the region re-fetches with the filter's fields
    snap(big["servers"]["gm-02"], "resize_00", 4321, running=2, workers=4)
    live.send({"type": "queue", "server": "gm-02", "at": 1.0, "functions": ["resize_00"]})
    page.wait_for_function("""() => [...document.querySelectorAll(
        'tr.queue-row[data-server="gm-02"] td.queued')]
        .some(c => c.innerText.trim() === '4,321')""", timeout=10_000)
    assert {f.split("@")[0] for f in _functions(page)} == {"resize_00"}
    assert page.input_value("#overview-q") == "resize_00"
    assert page.evaluate("window.__sameDocument") is True

    # idle queues unfold from their count
    page.fill("#overview-q", "score_19")
    page.locator("label[data-idle]").first.wait_for()
    assert page.locator("tr.queue-row").count() == 0
    page.locator("label[data-idle]").first.click()
    page.wait_for_function("document.querySelectorAll('tr.queue-row').length === 17",
                           timeout=10_000)
    assert "idle=1" in page.url
    page.screenshot(path=artifacts / "overview-scale-idle.png")


def test_an_operator_retires_a_server_nothing_polls(live_server, page, big, sign_in, opal,
                                                    artifacts):
    sign_in("opal", PASSWORD)
    page.goto(live_server.url + "/")
    card = page.locator(f'.server-card[data-server="{STALE}"]')
    assert "not polled" in card.inner_text().lower()
    card.locator("summary", has_text="Retire").click()
    confirm = card.locator(".confirm-box")
    assert confirm.is_visible() and "its jobs, charts and alerts are kept" in confirm.inner_text()
    page.screenshot(path=artifacts / "overview-retire-confirm.png")
    confirm.locator("button", has_text="Retire").click()
    page.wait_for_url(live_server.url + "/")
    assert page.locator(f'.server-card[data-server="{STALE}"]').count() == 0
    assert f"{STALE} is retired" in page.locator(".flash-stack").inner_text()
    assert page.locator(f'tr.queue-row[data-server="{STALE}"]').count() == 0

    page.locator(".retired-note label").click()  # show retired servers
    page.locator(f'.server-card.server-retired[data-server="{STALE}"]').wait_for()
    assert "retired=1" in page.url
    page.screenshot(path=artifacts / "overview-retired-shown.png")
