"""A real Chromium on the alerts pages: an operator makes a rule in the form, fresh queue
data makes it fire, the header strip and /alerts/ show it without a reload, Ack works; and
screenshots of every alerts page for a person to look at.

pytest-django's live server speaks WSGI, so ``/ws/live/`` is the quiet stand-in from
``conftest.py``; ``?poll=1`` makes the fallback poll carry the changes.
"""

from __future__ import annotations

import re

import pytest

from alerts import services
from alerts.models import Alert, Channel, Rule
from tests.browser.fake_live import FakeLive
from tests.receiver import Receiver
from tests.support.users import PASSWORD
from tests.support.worlds import img_backlog

pytestmark = [pytest.mark.browser]


def test_operator_makes_a_rule_sees_it_fire_and_acks_it(live_server, transactional_db, page,
                                                         sign_in, artifacts, opal):
    sign_in("opal", PASSWORD)
    page.goto(live_server.url + "/alerts/")
    assert page.locator("#alerts-nav-count").is_hidden()  # nothing fires yet
    assert page.locator(".alert-strip").count() == 0
    assert page.locator(".all-clear").inner_text().startswith("Nothing is firing.")
    page.click("text=New rule")
    page.wait_for_url("**/alerts/rules/new/")

    # the window field only shows for metrics computed over a window
    window = page.locator(".field-window_seconds")
    assert window.is_hidden()
    page.select_option("#id_metric", "failure_rate")
    assert window.is_visible()
    page.select_option("#id_metric", "queue_depth")
    assert window.is_hidden()

    page.fill("#id_name", "Images pile up")
    page.fill("#id_function", "img*")
    page.select_option("#id_operator", ">")
    page.fill("#id_threshold", "five")
    page.fill("#id_for_seconds", "0")
    page.click("button:has-text('Create rule')")
    error = page.locator(".field-threshold .field-error")
    assert error.inner_text() == "A valid number is required."
    assert page.locator("#id_name").input_value() == "Images pile up"  # kept
    page.screenshot(path=artifacts / "alert-rule-form-error.png", full_page=True)
    assert Rule.objects.count() == 0

    page.fill("#id_threshold", "5")
    page.screenshot(path=artifacts / "alert-rule-form.png", full_page=True)
    page.click("button:has-text('Create rule')")
    page.wait_for_url(re.compile(r"/alerts/#rule-\d+$"))
    rule = Rule.objects.get()
    assert (rule.metric, rule.function, rule.operator, rule.threshold, rule.for_seconds) == (
        "queue_depth", "img*", ">", 5.0, 0)
    row = page.locator(f"#rule-{rule.pk}")
    assert "queue_depth of img* > 5" in row.inner_text()
    assert "Rule “Images pile up” created" in page.locator(".flash-stack").inner_text()

    # fresh data: 20 jobs queued for img_resize and no worker; one evaluation tick
    page.goto(live_server.url + "/?poll=1")
    page.evaluate("window.__sameDocument = true")
    img_backlog(address="127.0.0.1:4730")
    fired = services.evaluate(refresh=False).fired
    assert len(fired) == 1
    item = page.locator(f'.strip-item[data-alert-id="{fired[0]}"]')
    item.wait_for(timeout=10_000)  # the strip refreshed itself, no reload
    assert page.evaluate("window.__sameDocument") is True
    assert "Images pile up" in item.inner_text() and "img_resize" in item.inner_text()
    assert page.locator("#alerts-nav-count").inner_text() == "1"
    assert page.locator(".strip-count").inner_text().strip() == "1 alert firing"
    page.screenshot(path=artifacts / "alert-header-strip.png")

    page.goto(live_server.url + "/alerts/?poll=1")
    alert_row = page.locator(f"#alert-{fired[0]}")
    assert "img_resize" in alert_row.inner_text() and "20" in alert_row.inner_text()
    assert "not acknowledged" in alert_row.inner_text().lower()
    alert_row.locator("button:has-text('Ack')").click()
    page.locator(f"#alert-{fired[0]}.is-acked").wait_for()
    assert "opal" in page.locator(f"#alert-{fired[0]} .ack-cell").inner_text()
    alert = Alert.objects.get(pk=fired[0])
    assert alert.acknowledged_by.username == "opal"
    page.locator(f'.strip-item.is-acked[data-alert-id="{fired[0]}"]').wait_for(timeout=10_000)


def test_an_alert_message_alone_refreshes_the_header(live_server, transactional_db, page,
                                                     sign_in, vera):
    rule = Rule.objects.create(name="Images pile up", metric="queue_depth", function="img*",
                               operator=">", threshold=5)
    live = FakeLive(page)
    sign_in("vera", PASSWORD)
    page.goto(live_server.url + "/jobs/?poll=300")  # the poll cannot be what refreshes it
    page.locator('[data-hq-live-status][data-state="live"]').wait_for()
    page.evaluate("window.__sameDocument = true")
    img_backlog()
    [alert_id] = services.evaluate(refresh=False).fired
    live.send({"type": "alert", "id": alert_id, "rule": rule.name, "function": "img_resize",
               "server": "gm-img", "state": "firing", "value": 20.0, "severity": "warning"})
    page.locator(f'.strip-item[data-alert-id="{alert_id}"]').wait_for(timeout=5_000)
    assert page.locator("#alerts-nav-count").inner_text() == "1"
    assert page.evaluate("window.__sameDocument") is True


def test_alert_pages_screenshots(live_server, transactional_db, page, sign_in, artifacts, ada,
                                 receiver: Receiver, alert_world):
    local = Channel.objects.create(name="Local webhook", url=receiver.url)
    sign_in("ada", PASSWORD)

    page.goto(live_server.url + "/alerts/")
    assert page.locator(".firing-table .alert-row").count() == 2
    first = page.locator(".firing-table .alert-row").first
    assert "Transcoding has no workers" in first.inner_text()
    assert page.locator(".sum-firing .stat-value").inner_text() == "2"
    page.screenshot(path=artifacts / "alerts.png", full_page=True)

    # the overview with the header strip
    page.goto(live_server.url + "/")
    assert page.locator(".strip-item").count() == 2
    page.screenshot(path=artifacts / "alerts-overview-strip.png")

    page.goto(live_server.url + f"/alerts/{alert_world['critical'].pk}/")
    assert page.locator("#alert-title").inner_text() == "Transcoding has no workers"
    assert page.locator(".snapshot-queues tr.is-alert-queue").count() == 1
    assert page.locator(".snapshot-workers tr.worker-row").count() == 3
    page.screenshot(path=artifacts / "alert-detail.png", full_page=True)

    page.goto(live_server.url + "/alerts/rules/new/?metric=queue_depth&function=resize_image")
    assert page.locator("#id_function").input_value() == "resize_image"
    page.check("text=#ops on Slack")
    page.screenshot(path=artifacts / "alert-rule-new-prefilled.png", full_page=True)

    page.goto(live_server.url + "/alerts/channels/")
    page.locator(f"#channel-{local.pk} button:has-text('Send test')").click()
    page.locator(f"#test-result-{local.pk} .test-ok").wait_for()
    assert len(receiver.messages) == 1
    hook = alert_world["hook"]
    page.locator(f"#channel-{hook.pk} button:has-text('Send test')").click()
    failed = page.locator(f"#test-result-{hook.pk} .test-fail")
    failed.wait_for()
    assert "Failed:" in failed.inner_text()
    page.screenshot(path=artifacts / "alert-channels.png", full_page=True)

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(live_server.url + "/alerts/")
    page.screenshot(path=artifacts / "alerts-phone.png", full_page=True)
