"""Playwright's Chromium against pytest-django's live server.

Playwright's sync API keeps an asyncio loop running in this thread, which makes Django
refuse ORM calls from it unless told that this is fine (it is: the test is synchronous).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import ARTIFACTS

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


@pytest.fixture(scope="package")
def browser() -> Iterator[object]:
    """One Chromium for the browser tests, closed when they are done: Playwright's sync
    API keeps an event loop running in this thread, which later tests that bridge to
    async code (Channels) must not find."""
    from playwright import sync_api

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make deps` installs Debian's chromium")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                     headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator[object]:
    """A fresh browser context; fails the test on any JavaScript error or failed asset."""
    # bypass_csp: wait_for_function polls a string, which our CSP (no eval) blocks; the CSP
    # itself is checked page by page in test_security_ui.py
    context = browser.new_context(viewport={"width": 1440, "height": 900}, bypass_csp=True)
    page = context.new_page()
    problems: list[str] = []

    def console(msg) -> None:  # type: ignore[no-untyped-def]
        # 4xx pages the test asks for are logged as "Failed to load resource"; assets are
        # checked below by status instead.
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            problems.append(f"console: {msg.text}")

    def response(r) -> None:  # type: ignore[no-untyped-def]
        if "/static/" in r.url and r.status >= 400:
            problems.append(f"{r.status} {r.url}")

    # live_server speaks WSGI only: a quiet stand-in for /ws/live/ keeps every page's
    # live.js connected (tests that drive the socket register their own, which wins)
    page.route_web_socket(re.compile(r"/ws/live/"), lambda ws: None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", console)
    page.on("response", response)
    yield page
    context.close()
    assert not problems, problems


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def sign_in(page, live_server):  # type: ignore[no-untyped-def]
    """sign_in(username, password): through the login form, like a person."""

    def go(username: str, password: str) -> None:
        page.goto(live_server.url + "/login/")
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/login/" not in url)

    return go
