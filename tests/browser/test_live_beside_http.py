"""A real page from ``python -m hq.serve`` (HTTP on one port, the live websocket on
another) loads whole and connects its live stream: the header says "Live", through the real
CSP. (It caught granian's ``backpressure`` set to the thread count leaving one of a page's
six parallel asset requests unanswered for ever.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.support.users import PASSWORD
from tests.test_web_tier_load import Web, web  # noqa: F401  (the fixture)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_page_served_by_hq_serve_goes_live_on_the_websocket_port(
        web: Web, browser: object, artifacts: Path) -> None:  # noqa: F811
    context = browser.new_context(viewport={"width": 1440, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    try:
        page.goto(f"http://127.0.0.1:{web.port}/login/")
        page.fill("#id_username", "vera")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/login/" not in url)
        page.goto(f"http://127.0.0.1:{web.port}/workers/")
        page.wait_for_selector("[data-hq-live-status][data-state=live]", timeout=30_000)
        page.screenshot(path=str(artifacts / "live-beside-http.png"))
    finally:
        context.close()
    assert problems == []
