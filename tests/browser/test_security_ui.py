"""A real Chromium on every page under HQ's Content-Security-Policy: no console error, no
CSP violation (inline style or script, a CDN, eval), and every page sends the policy.
Screenshots of each page go to test-artifacts/security-*.png.

These tests open their own browser context that enforces the policy (``strict_page``):
the shared ``page`` fixture may bypass it, because Playwright's polling
``wait_for_function("…")`` evaluates its string with ``eval``, which the policy forbids.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.support.users import PASSWORD

pytestmark = [pytest.mark.browser]

#: collects what the browser refused, before any page script runs
WATCH_CSP = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', function (e) {
  window.__csp.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline') + ' ' +
                    (e.sourceFile || '') + ':' + (e.lineNumber || ''));
});
"""


@pytest.fixture
def strict_page(browser) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """A page whose context enforces the CSP; fails the test on any console error
    (a CSP violation is one), page error or failed static file."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, bypass_csp=False)
    page = context.new_page()
    problems: list[str] = []
    page.route_web_socket(re.compile(r"/ws/live/"), lambda ws: None)  # WSGI live server
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}")
            if msg.type == "error" else None)
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}")
            if "/static/" in r.url and r.status >= 400 else None)
    page.add_init_script(WATCH_CSP)
    yield page
    context.close()
    assert not problems, problems


@pytest.fixture
def pages(alert_world):  # type: ignore[no-untyped-def]
    """name -> path of every page, with a job that draws its bars and pretty-prints JSON."""
    job = alert_world["running"]
    job.payload_text = '{"image": "s3://uploads/cat.jpg", "sizes": [64, 128, 512]}'
    job.payload_size = len(job.payload_text)
    job.progress_numerator, job.progress_denominator = 3, 8
    job.wait_ms, job.runtime_ms = 1200, 4800
    job.save()
    rule = alert_world["rules"]["deep"]
    return [
        ("overview", "/"), ("workers", "/workers/"), ("queue", "/queues/resize_image/"),
        ("jobs", "/jobs/"), ("job", f"/jobs/{job.pk}/"), ("alerts", "/alerts/"),
        ("alert", f"/alerts/{alert_world['critical'].pk}/"),
        ("rule-form", "/alerts/rules/new/"), ("rule-edit", f"/alerts/rules/{rule.pk}/edit/"),
        ("channels", "/alerts/channels/"), ("tokens", "/tokens/"), ("users", "/users/"),
        ("api-docs", "/api/docs/"),
    ]


def _visit(page, url: str):  # type: ignore[no-untyped-def]
    response = page.goto(url)
    assert response is not None and response.status == 200, url
    page.wait_for_load_state("networkidle")
    return response


def test_every_page_keeps_to_the_csp(live_server, transactional_db, strict_page, ada, pages,
                                     artifacts):  # type: ignore[no-untyped-def]
    page = strict_page
    login = _visit(page, live_server.url + "/login/")
    assert "script-src 'self'" in login.headers["content-security-policy"]
    page.screenshot(path=artifacts / "security-login.png", full_page=True)
    assert page.evaluate("window.__csp") == []
    page.fill("#id_username", "ada")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)

    for name, path in pages:
        response = _visit(page, live_server.url + path)
        policy = response.headers.get("content-security-policy", "")
        assert "default-src 'self'" in policy and "unsafe-inline" not in policy, name
        if name == "api-docs":
            page.locator(".swagger-ui .info .title").wait_for(timeout=15_000)
            page.screenshot(path=artifacts / "security-api-docs.png", full_page=True)
            assert page.locator(".opblock").count() > 10  # the schema loaded and drew
        if name == "queue":
            page.locator(".uplot").first.wait_for(timeout=10_000)  # charts drew
        if name == "job":
            fill = page.locator(".progress-fill")
            width = fill.evaluate("el => getComputedStyle(el).width")
            track = page.locator(".progress").evaluate("el => getComputedStyle(el).width")
            assert 0.3 < float(width[:-2]) / float(track[:-2]) < 0.45  # 3/8 without style=""
            assert page.locator("pre.blob").inner_text().startswith("{\n  \"image\"")
        page.screenshot(path=artifacts / f"security-{name}.png", full_page=True)
        assert page.evaluate("window.__csp") == [], name


def test_a_new_token_is_shown_once_in_the_browser(live_server, transactional_db, strict_page,
                                                  opal, artifacts):  # type: ignore[no-untyped-def]
    page = strict_page
    page.goto(live_server.url + "/login/")
    page.fill("#id_username", "opal")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)
    _visit(page, live_server.url + "/tokens/")
    page.fill("#id_name", "deploy script")
    page.select_option("#id_expires_in", "30")
    page.click("form.channel-form button[type=submit]")
    secret = page.locator("#new-token").inner_text()
    assert secret.startswith("hq_")
    row = page.locator("tr.token-row").first
    assert "deploy script" in row.inner_text() and secret[:10] in row.inner_text()
    page.screenshot(path=artifacts / "security-token-created.png", full_page=True)
    _visit(page, live_server.url + "/tokens/")
    assert page.locator("#new-token").count() == 0 and secret not in page.content()
    assert "in 29 d" in row.inner_text()  # 30 days less the seconds since
    assert page.evaluate("window.__csp") == []
