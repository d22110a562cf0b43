"""The alerts forms through Django's test client, on the real Postgres: the rule form
(refusing what the API refuses, in the API's words), and channels with a real apprise send
to a local receiver.

The world is ``alert_world`` (``tests.support.worlds.build_alert_world``); its operator is
``opal``, the ``operator`` fixture's user.
"""

from __future__ import annotations

import re
from html import unescape

from alerts import services
from alerts.models import Channel, Notification, Rule, RuleState
from tests.receiver import Receiver
from tests.support.stack import ROOT, free_port
from tests.support.web import HX, field_errors, rule_form
from tests.support.worlds import img_backlog

# ---------------------------------------------------------------- the rule form


def test_queue_page_offers_a_prefilled_rule(operator, alert_world):
    html = operator.get("/queues/resize_image/").content.decode()
    assert 'href="/alerts/rules/new/?metric=queue_depth&amp;function=resize_image"' in html
    html = operator.get("/alerts/rules/new/?metric=queue_depth&function=resize_image"
                           ).content.decode()
    assert '<option value="queue_depth" selected>queue depth (jobs)</option>' in html
    assert 'name="function" value="resize_image"' in html
    assert 'name="name" value="resize_image: queue depth"' in html
    assert '<option value="gm-prod-1">gm-prod-1</option>' in html  # servers to pick from
    assert "0 = at once" in html
    for channel in ("#ops on Slack", "Ops e-mail", "Incident webhook"):
        assert channel in html
    html = operator.get("/alerts/rules/new/").content.decode()
    assert 'name="function" value="*"' in html
    assert '<input type="checkbox" name="enabled" id="id_enabled" checked>' in html


def test_operator_creates_edits_and_deletes_a_rule(operator, alert_world):
    slack, mail = alert_world["slack"], alert_world["mail"]
    response = operator.post("/alerts/rules/new/", rule_form(
        channels=[str(slack.pk), str(mail.pk)], server="gm-prod-1"))
    assert response.status_code == 302
    rule = Rule.objects.get(name="Images backed up")
    assert response["Location"] == f"/alerts/#rule-{rule.pk}"
    assert (rule.metric, rule.function, rule.operator, rule.threshold) == (
        "queue_depth", "img*", ">", 500.0)
    assert (rule.for_seconds, rule.severity, rule.enabled) == (120, "critical", True)
    assert rule.server.name == "gm-prod-1"
    assert set(rule.channels.all()) == {slack, mail}
    html = operator.get("/alerts/").content.decode()
    assert "Rule “Images backed up” created: queue_depth of img* &gt; 500 for 120 s." in html

    html = operator.get(f"/alerts/rules/{rule.pk}/edit/").content.decode()
    assert 'name="threshold" value="500"' in html and 'name="function" value="img*"' in html
    assert f'value="{slack.pk}"' in html and "checked" in html
    assert "Delete this rule…" in html
    response = operator.post(f"/alerts/rules/{rule.pk}/edit/", rule_form(
        threshold="750.5", function="img_*", metric="failure_rate", threshold_unused=None,
        window_seconds="900", channels=[str(mail.pk)], enabled=None))
    assert response.status_code == 302
    rule.refresh_from_db()
    assert (rule.threshold, rule.function, rule.metric, rule.window_seconds) == (
        750.5, "img_*", "failure_rate", 900)
    assert rule.enabled is False and list(rule.channels.all()) == [mail]
    assert rule.server is None

    response = operator.post(f"/alerts/rules/{rule.pk}/delete/")
    assert response.status_code == 302 and response["Location"] == "/alerts/"
    assert not Rule.objects.filter(pk=rule.pk).exists()
    assert operator.get(f"/alerts/rules/{rule.pk}/edit/").status_code == 404


def _api_errors(client, body: dict) -> dict[str, list[str]]:
    response = client.post("/api/v1/alert-rules/", body, content_type="application/json")
    assert response.status_code == 400
    return response.json()["error"]["fields"]


def test_form_refuses_what_the_api_refuses_in_the_same_words(operator, alert_world):
    count = Rule.objects.count()
    cases = [
        ("threshold", {"threshold": "lots"}, {"threshold": "lots"}),
        ("threshold", {"threshold": ""}, {}),  # missing: required
        ("function", {"function": ""}, {"function": ""}),
        ("function", {"function": "   "}, {"function": "   "}),
        ("metric", {"metric": "queue_length"}, {"metric": "queue_length"}),
        ("window_seconds", {"window_seconds": "10", "metric": "failure_rate"},
         {"window_seconds": 10, "metric": "failure_rate"}),
        ("for_seconds", {"for_seconds": "-5"}, {"for_seconds": -5}),
        ("server", {"server": "gm-nowhere"}, {"server": "gm-nowhere"}),
        ("name", {"name": ""}, {"name": ""}),
    ]
    for field, form_over, api_over in cases:
        response = operator.post("/alerts/rules/new/", rule_form(**form_over))
        assert response.status_code == 400, field
        html = response.content.decode()
        shown = field_errors(html, field)
        api = {"name": "Images backed up", "metric": "queue_depth", "function": "img*",
               "operator": ">", "threshold": 500, "severity": "critical"}
        api.update(api_over)
        if field == "threshold" and not api_over:
            del api["threshold"]
        assert shown and shown == _api_errors(operator, api)[field], (field, shown)
        assert "The rule was not saved" in html
    assert Rule.objects.count() == count
    # what was typed stays in the form
    html = operator.post("/alerts/rules/new/", rule_form(threshold="lots", name="Keep me")
                            ).content.decode()
    assert 'name="name" value="Keep me"' in html and 'name="threshold" value="lots"' in html


def test_window_field_is_shown_only_for_windowed_metrics(operator, alert_world):
    html = operator.get("/alerts/rules/new/").content.decode()
    assert "/static/css/alerts.css" in html  # the form's rules live in the stylesheet (CSP)
    style = (ROOT / "static" / "css" / "alerts.css").read_text()
    for metric in ("failure_rate", "runtime_p95", "drain_time"):
        assert f'#id_metric option:checked[value="{metric}"]' in style
    window_rule = next(rule for rule in style.split("}")
                       if ".field-window_seconds" in rule and "option:checked" in rule)
    assert "queue_depth" not in window_rule and "display: flex" in window_rule
    # and the threshold's meaning follows the metric
    assert '.metric-hint[data-metric="failure_rate"]' in style
    assert 'data-metric="failure_rate">A fraction of finished jobs: 0.05 = 5 %<' in html


def test_toggle_a_rule_over_htmx(operator, alert_world):
    deep = alert_world["rules"]["deep"]
    response = operator.post(f"/alerts/rules/{deep.pk}/toggle/", {"enabled": "0"}, **HX)
    row = response.content.decode().strip()
    assert row.startswith(f'<tr id="rule-{deep.pk}" class="rule-row is-disabled"')
    assert 'aria-checked="false"' in row
    deep.refresh_from_db()
    assert deep.enabled is False
    # the same click again (a double click) does not flip it back
    operator.post(f"/alerts/rules/{deep.pk}/toggle/", {"enabled": "0"}, **HX)
    deep.refresh_from_db()
    assert deep.enabled is False
    operator.post(f"/alerts/rules/{deep.pk}/toggle/", {"enabled": "1"}, **HX)
    deep.refresh_from_db()
    assert deep.enabled is True


# ---------------------------------------------------------------- channels


def test_admin_manages_channels(admin, alert_world):
    html = admin.get("/alerts/channels/").content.decode()
    for name in ("#ops on Slack", "Ops e-mail", "Incident webhook"):
        assert name in html
    assert "s3cret" not in html and "TIiajkdnlazkcOXrIdevi7F" not in html  # masked
    assert "mailto://alerts:****@example.com" in html
    for example in ("mailto://", "slack://", "discord://", "tgram://", "json://"):
        assert example in html
    hook = alert_world["hook"]
    row = re.search(rf'<tr id="channel-{hook.pk}" class="channel-row is-failing".*?</tr>',
                    html, re.S).group(0)
    assert "1 failing in 24 h" in row

    response = admin.post("/alerts/channels/", {"name": "Pager", "url": "nonsense"})
    assert response.status_code == 400
    assert field_errors(response.content.decode(), "url") == [
        "Not an apprise URL apprise can use (e.g. mailto://…, slack://…, json://…)."]
    response = admin.post("/alerts/channels/", {"name": "#ops on Slack",
                                                   "url": "json://example.com/x"})
    assert response.status_code == 400
    assert field_errors(response.content.decode(), "name") == [
        "channel with this name already exists."]

    response = admin.post("/alerts/channels/", {"name": "Pager",
                                                   "url": " json://pager.example/hook "})
    assert response.status_code == 302
    pager = Channel.objects.get(name="Pager")
    assert pager.url == "json://pager.example/hook" and pager.enabled
    admin.post(f"/alerts/channels/{pager.pk}/toggle/")
    pager.refresh_from_db()
    assert pager.enabled is False
    html = admin.get("/alerts/channels/").content.decode()
    assert re.search(rf'<tr id="channel-{pager.pk}" class="channel-row is-disabled"', html)
    assert "disabled: rules no longer notify it" in html
    response = admin.post(f"/alerts/channels/{pager.pk}/delete/")
    assert response.status_code == 302 and not Channel.objects.filter(pk=pager.pk).exists()


def test_send_test_reaches_a_real_receiver(admin, receiver: Receiver):
    channel = Channel.objects.create(name="local hook", url=receiver.url)
    response = admin.post(f"/alerts/channels/{channel.pk}/test/", **HX)
    html = response.content.decode()
    assert response.status_code == 200 and 'class="test-ok" data-ok="true"' in html
    assert "Sent at" in html
    assert len(receiver.messages) == 1
    assert receiver.messages[0]["title"] == "Gearman HQ test notification"
    note = Notification.objects.get(channel=channel, kind="test")
    assert (note.status, note.attempts, note.last_error) == ("sent", 1, "")


def test_send_test_to_a_closed_port_shows_apprise_error(admin, db):
    port = free_port()  # bound and released: nothing listens there
    channel = Channel.objects.create(name="dead hook", url=f"json://127.0.0.1:{port}/hook")
    response = admin.post(f"/alerts/channels/{channel.pk}/test/", **HX)
    html = unescape(response.content.decode())
    assert response.status_code == 200 and 'data-ok="false"' in html
    note = Notification.objects.get(channel=channel, kind="test")
    assert note.status == "failed" and note.last_error
    # apprise's own words, without its log line's date and level
    shown = re.search(r"<strong>Failed:</strong> (.*?)</span>", html).group(1)
    assert shown and shown in note.last_error and not shown[0].isdigit()
    assert "connection" in shown.lower()
    # without htmx: back to the page with the error as a message
    response = admin.post(f"/alerts/channels/{channel.pk}/test/", follow=True)
    assert "Test to “dead hook” failed:" in unescape(response.content.decode())


# ---------------------------------------------------------------- the browser test's path


def test_a_rule_made_in_the_form_fires_on_fresh_data(operator):
    """What tests/browser/test_alerts_ui.py does through Chromium, here without one."""
    operator.post("/alerts/rules/new/", rule_form(
        name="Images pile up", threshold="5", for_seconds="0", severity="warning"))
    img_backlog()
    tick = services.evaluate(refresh=False)
    assert len(tick.fired) == 1
    assert RuleState.objects.get().state == "firing"
    html = operator.get("/alerts/").content.decode()
    assert "Images pile up" in html and "img_resize" in html and "1 alert firing" in html
