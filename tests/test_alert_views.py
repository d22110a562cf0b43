"""The alerts pages through Django's test client, on the real Postgres: who may do what,
the rule form (refusing what the API refuses, in the API's words), ack over htmx, channels
with a real apprise send to a local receiver, one alert's page with its snapshot, and the
header on every page.

``build_alert_world`` is shared with ``tests/browser/test_alerts_ui.py``.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from html import unescape

import pytest
from django.utils import timezone

from alerts import services
from alerts.models import Alert, Channel, Notification, Rule, RuleState
from alerts.presenters import FiringAlerts, clean_error, metric_text
from hq.models import Role
from hq.services import ensure_user
from jobs.models import Server
from monitoring.models import QueueSnapshot, ServerState
from tests.conftest import free_port
from tests.conftest import make_user as _make_user
from tests.receiver import Receiver
from tests.test_monitoring_views import build_world

PASSWORD = "alerts-pass-123"
HX = {"HTTP_HX_REQUEST": "true"}


# ---------------------------------------------------------------- a small world


def _rule(name: str, metric: str, function: str, op: str, threshold: float, *,
          severity: str = "warning", for_seconds: int = 0, channels=(), **kw) -> Rule:
    rule = Rule.objects.create(name=name, metric=metric, function=function, operator=op,
                               threshold=threshold, for_seconds=for_seconds,
                               severity=severity, **kw)
    rule.channels.set(channels)
    return rule


def _fired_ago(alert: Alert, ago: timedelta) -> None:
    """Move an alert (and the worker times in its snapshot) ``ago`` into the past."""
    snapshot = alert.snapshot
    for w in snapshot.get("workers", []):
        for key in ("connected_at", "last_seen"):
            w[key] = (datetime.fromisoformat(w[key]) - ago).isoformat()
    Alert.objects.filter(pk=alert.pk).update(started_at=alert.started_at - ago,
                                             last_notified_at=alert.started_at - ago,
                                             snapshot=snapshot)


def build_alert_world() -> dict[str, object]:
    """The monitoring world (two servers, four queues in four moods, three workers) with
    rules evaluated against it: two alerts firing (one acknowledged), one queue pending,
    history of resolved alerts, channels that work and one that does not."""
    world = build_world()
    now = timezone.now()
    opal = ensure_user("opal", Role.OPERATOR)
    slack = Channel.objects.create(name="#ops on Slack",
                                   url="slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7F/#ops")
    mail = Channel.objects.create(name="Ops e-mail",
                                  url="mailto://alerts:s3cret@example.com?to=ops@example.com")
    hook = Channel.objects.create(name="Incident webhook",
                                  url=f"json://127.0.0.1:{free_port()}/gearman")
    no_workers = _rule("Transcoding has no workers", "workers", "transcode_*", "<", 1,
                       severity="critical", channels=[slack, mail, hook])
    stale = _rule("Mail waits too long", "oldest_queued_age", "send_*", ">", 120,
                  channels=[slack])
    _rule("Mail queue deep", "queue_depth", "send_*", ">", 100, for_seconds=600,
          channels=[mail])
    _rule("Resize failure rate", "failure_rate", "resize_*", ">", 0.05, window_seconds=900,
          channels=[slack])
    deep = _rule("Resize queue deep", "queue_depth", "resize_*", ">", 500, for_seconds=120,
                 severity="critical", channels=[slack, mail])
    _rule("Reports stranded", "stranded", "nightly_*", ">", 0, severity="info",
          enabled=False)

    tick = services.evaluate(refresh=False)
    firing = {a.rule_id: a for a in Alert.objects.filter(pk__in=tick.fired)}
    critical, warning = firing[no_workers.pk], firing[stale.pk]
    services.acknowledge(warning.pk, opal, 3600)
    # as if they had fired a while ago (the values are today's)
    _fired_ago(critical, timedelta(minutes=12, seconds=8))
    _fired_ago(warning, timedelta(minutes=3, seconds=40))
    Alert.objects.filter(pk=warning.pk).update(acknowledged_at=now - timedelta(minutes=2))
    critical.refresh_from_db()
    warning.refresh_from_db()
    # what delivery would have recorded: Slack took it, the webhook is down, mail retries
    notes = {n.channel_id: n for n in Notification.objects.filter(alert=critical)}
    Notification.objects.filter(pk=notes[slack.pk].pk).update(
        status="sent", attempts=1, sent_at=now)
    Notification.objects.filter(pk=notes[hook.pk].pk).update(
        status="failed", attempts=8, next_attempt_at=now - timedelta(minutes=1),
        last_error="Connection refused: json://127.0.0.1 (HTTPConnectionPool: Max retries "
                   "exceeded with url: /gearman)")
    Notification.objects.filter(pk=notes[mail.pk].pk).update(
        attempts=2, next_attempt_at=now + timedelta(seconds=30),
        last_error="Sending email to ops@example.com failed: timed out")
    Notification.objects.filter(alert=warning).update(status="sent", attempts=1, sent_at=now)

    history = []
    for hours, minutes, value, peak, who in ((3, 14, 12, 880, opal), (9, 3, 40, 612, None),
                                             (26, 47, 0, 1460, opal)):
        start = now - timedelta(hours=hours)
        history.append(Alert.objects.create(
            rule=deep, server=world["prod"], function="resize_image", state="resolved",
            value=value, peak=peak, started_at=start,
            resolved_at=start + timedelta(minutes=minutes),
            acknowledged_by=who,
            acknowledged_at=start + timedelta(minutes=2) if who else None,
            snapshot={"queues": [], "workers": []}))
    return {**world, "operator": opal, "slack": slack, "mail": mail, "hook": hook,
            "critical": critical, "warning": warning, "history": history,
            "rules": {"no_workers": no_workers, "stale": stale, "deep": deep}}


# ---------------------------------------------------------------- fixtures


def _user(username: str, role: Role | None):
    return _make_user(username, role, PASSWORD)


@pytest.fixture
def world(db) -> dict[str, object]:
    return build_alert_world()


@pytest.fixture
def as_viewer(client, db):
    client.force_login(_user("vera", Role.VIEWER))
    return client


@pytest.fixture
def as_operator(client, world):
    client.force_login(world["operator"])
    return client


@pytest.fixture
def as_admin(client, db):
    client.force_login(_user("ada", Role.ADMIN))
    return client


def _field_errors(html: str, field: str) -> list[str]:
    """The error messages rendered inside the form field ``field``'s block."""
    block = re.search(rf'<div class="field field-{field}[^"]*">(.*?)</div>', html, re.S)
    assert block, f"no field {field} in the page"
    return [unescape(m) for m in re.findall(r'<span class="field-error"[^>]*>(.*?)</span>',
                                            block.group(1))]


def _rule_post(**over) -> dict[str, object]:
    data = {"name": "Images backed up", "metric": "queue_depth", "function": "img*",
            "server": "", "operator": ">", "threshold": "500", "for_seconds": "120",
            "window_seconds": "300", "severity": "critical", "enabled": "on"}
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


# ---------------------------------------------------------------- who may do what


def test_anonymous_goes_to_sign_in(client, db):
    for url in ("/alerts/", "/alerts/rules/new/", "/alerts/channels/", "/alerts/1/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/")
    response = client.get("/alerts/", **HX)  # a partial would swap the login form in
    assert response.status_code == 200 and response["HX-Redirect"].startswith("/login/")


def test_viewer_reads_but_cannot_change_anything(as_viewer, world):
    client = as_viewer
    html = client.get("/alerts/").content.decode()
    assert "Transcoding has no workers" in html and "Mail waits too long" in html
    assert "workers of transcode_* &lt; 1" in html  # the rule as a sentence
    assert "New rule" not in html and 'class="button small-button ack-button"' not in html
    assert 'role="switch"' not in html and "/edit/" not in html
    assert client.get(f"/alerts/{world['critical'].pk}/").status_code == 200

    alert = world["critical"]
    assert client.post(f"/alerts/{alert.pk}/ack/").status_code == 403
    assert client.post(f"/alerts/{alert.pk}/ack/", **HX).status_code == 403
    alert.refresh_from_db()
    assert alert.acknowledged_at is None

    rules = Rule.objects.count()
    response = client.get("/alerts/rules/new/")
    assert response.status_code == 403
    assert "Only operators and admins" in response.content.decode()
    assert client.post("/alerts/rules/new/", _rule_post()).status_code == 403
    deep = world["rules"]["deep"]
    assert client.get(f"/alerts/rules/{deep.pk}/edit/").status_code == 403
    assert client.post(f"/alerts/rules/{deep.pk}/toggle/").status_code == 403
    assert client.post(f"/alerts/rules/{deep.pk}/delete/").status_code == 403
    assert Rule.objects.count() == rules and Rule.objects.get(pk=deep.pk).enabled

    assert client.get("/alerts/channels/").status_code == 403
    assert client.post(f"/alerts/channels/{world['slack'].pk}/test/").status_code == 403


def test_operator_acts_on_rules_and_alerts_but_not_channels(as_operator, world):
    html = as_operator.get("/alerts/").content.decode()
    assert "New rule" in html and 'class="button small-button ack-button"' in html
    assert f'href="/alerts/rules/{world["rules"]["deep"].pk}/edit/"' in html
    assert "Channels</a>" not in html  # the channels button is for admins
    assert as_operator.get("/alerts/channels/").status_code == 403
    before = Channel.objects.count()
    response = as_operator.post("/alerts/channels/", {"name": "x", "url": "json://a/b"})
    assert response.status_code == 403 and Channel.objects.count() == before
    slack = world["slack"]
    assert as_operator.post(f"/alerts/channels/{slack.pk}/toggle/").status_code == 403
    assert as_operator.post(f"/alerts/channels/{slack.pk}/delete/").status_code == 403
    assert Channel.objects.get(pk=slack.pk).enabled


def test_a_user_without_a_role_sees_no_alerts(client, world):
    client.force_login(_user("nobody", None))
    response = client.get("/alerts/")
    assert response.status_code == 403
    html = response.content.decode()
    assert 'href="/alerts/"' not in html and "alert-strip" not in html


# ---------------------------------------------------------------- /alerts/


def test_alerts_page_orders_firing_first_and_lists_rules_and_history(as_viewer, world):
    html = as_viewer.get("/alerts/").content.decode()
    firing = html.index('id="firing-title"')
    rules = html.index('id="rules-title"')
    history = html.index('id="history-title"')
    assert firing < rules < history
    section = html[firing:rules]
    # the critical alert before the (acknowledged) warning
    assert section.index("Transcoding has no workers") < section.index("Mail waits too long")
    critical = re.search(r'<tr class="alert-row sev-row-critical[^"]*"[^>]*>(.*?)</tr>',
                         section, re.S).group(1)
    assert "transcode_video" in critical and "gm-prod-1" in critical
    assert "not acknowledged" in critical and "workers &lt; 1" in critical
    warning = re.search(r'<tr class="alert-row sev-row-warning is-acked"[^>]*>(.*?)</tr>',
                        section, re.S).group(1)
    assert "opal" in warning and "silenced until" in warning
    assert re.search(r'<strong class="value">4 min \d+ s</strong>', warning)  # in seconds' unit

    rule_rows = html[rules:history]
    assert "queue_depth of send_* &gt; 100 for 600 s" in rule_rows
    assert "pending · 1" in rule_rows and "firing · 1 queue" in rule_rows
    assert "failure_rate of resize_* &gt; 0.05" in rule_rows and "over 15 min" in rule_rows
    assert re.search(r'class="rule-row is-disabled"[^>]*>\s*<td class="rule-cell">\s*'
                     r'<span class="rule-name">Reports stranded', rule_rows)
    assert "#ops on Slack" in rule_rows and "UI only" in rule_rows

    rows = re.findall(r'<tr class="history-row state-row-(\w+)', html[history:])
    assert rows.count("firing") == 2 and rows.count("resolved") == 3
    assert "47 min" in html[history:] and "1,460" in html[history:]


def test_history_filter(as_viewer, world):
    html = as_viewer.get("/alerts/?state=resolved").content.decode()
    history = html[html.index('id="history-title"'):]
    assert set(re.findall(r'<tr class="history-row state-row-(\w+)', history)) == {"resolved"}
    assert '<a href="?state=resolved#history" class="active">' in history
    html = as_viewer.get("/alerts/?state=firing").content.decode()
    history = html[html.index('id="history-title"'):]
    assert re.findall(r'<tr class="history-row state-row-(\w+)', history) == ["firing"] * 2


def test_alerts_page_answers_htmx_with_its_fragment(as_viewer, world):
    response = as_viewer.get("/alerts/", **HX)
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html
    assert 'id="firing-title"' in html and "Transcoding has no workers" in html
    assert "HX-Request" in response["Vary"]
    page = as_viewer.get("/alerts/?poll=2").content.decode()
    assert 'data-hq-live="alert"' in page and 'hx-trigger="hq:changed, every 2s"' in page


def test_nothing_firing_says_so(as_viewer, db):
    html = as_viewer.get("/alerts/").content.decode()
    assert "Nothing is firing." in html and "No rules yet" in html and "No alerts yet" in html


# ---------------------------------------------------------------- ack


def test_ack_over_htmx_returns_the_updated_row(as_operator, world):
    alert = world["critical"]
    response = as_operator.post(f"/alerts/{alert.pk}/ack/", **HX)
    assert response.status_code == 200
    row = response.content.decode().strip()
    assert row.startswith(f'<tr class="alert-row sev-row-critical is-acked" id="alert-{alert.pk}"')
    assert row.endswith("</tr>") and "opal" in row and "not acknowledged" not in row
    assert "ack-button" not in row and "Silence 1 h" in row  # can still silence it
    alert.refresh_from_db()
    assert alert.acknowledged_by == world["operator"] and alert.silenced_until is None

    response = as_operator.post(f"/alerts/{alert.pk}/ack/", {"silence_seconds": "3600"}, **HX)
    alert.refresh_from_db()
    assert alert.silenced_until is not None
    left = (alert.silenced_until - timezone.now()).total_seconds()
    assert 3500 < left <= 3600
    assert "silenced until" in response.content.decode()
    assert "Silence 1 h" not in response.content.decode()


def test_ack_without_htmx_goes_back(as_operator, world):
    alert = world["critical"]
    response = as_operator.post(f"/alerts/{alert.pk}/ack/", {"next": "/alerts/"})
    assert response.status_code == 302 and response["Location"] == "/alerts/"
    response = as_operator.post(f"/alerts/{alert.pk}/ack/", {"next": "https://evil.example/"})
    assert response["Location"] == f"/alerts/{alert.pk}/"


def test_ack_of_a_resolved_alert_says_why(as_operator, world):
    old = world["history"][0]
    response = as_operator.post(f"/alerts/{old.pk}/ack/", **HX)
    html = response.content.decode()
    assert response.status_code == 200 and "Only a firing alert can be acknowledged." in html
    assert "ack-button" not in html
    assert as_operator.post("/alerts/999999/ack/", **HX).status_code == 404


# ---------------------------------------------------------------- the rule form


def test_queue_page_offers_a_prefilled_rule(as_operator, world):
    html = as_operator.get("/queues/resize_image/").content.decode()
    assert 'href="/alerts/rules/new/?metric=queue_depth&amp;function=resize_image"' in html
    html = as_operator.get("/alerts/rules/new/?metric=queue_depth&function=resize_image"
                           ).content.decode()
    assert '<option value="queue_depth" selected>queue depth (jobs)</option>' in html
    assert 'name="function" value="resize_image"' in html
    assert 'name="name" value="resize_image: queue depth"' in html
    assert '<option value="gm-prod-1">gm-prod-1</option>' in html  # servers to pick from
    assert "0 = at once" in html
    for channel in ("#ops on Slack", "Ops e-mail", "Incident webhook"):
        assert channel in html
    html = as_operator.get("/alerts/rules/new/").content.decode()
    assert 'name="function" value="*"' in html
    assert '<input type="checkbox" name="enabled" id="id_enabled" checked>' in html


def test_operator_creates_edits_and_deletes_a_rule(as_operator, world):
    slack, mail = world["slack"], world["mail"]
    response = as_operator.post("/alerts/rules/new/", _rule_post(
        channels=[str(slack.pk), str(mail.pk)], server="gm-prod-1"))
    assert response.status_code == 302
    rule = Rule.objects.get(name="Images backed up")
    assert response["Location"] == f"/alerts/#rule-{rule.pk}"
    assert (rule.metric, rule.function, rule.operator, rule.threshold) == (
        "queue_depth", "img*", ">", 500.0)
    assert (rule.for_seconds, rule.severity, rule.enabled) == (120, "critical", True)
    assert rule.server.name == "gm-prod-1"
    assert set(rule.channels.all()) == {slack, mail}
    html = as_operator.get("/alerts/").content.decode()
    assert "Rule “Images backed up” created: queue_depth of img* &gt; 500 for 120 s." in html

    html = as_operator.get(f"/alerts/rules/{rule.pk}/edit/").content.decode()
    assert 'name="threshold" value="500"' in html and 'name="function" value="img*"' in html
    assert f'value="{slack.pk}"' in html and "checked" in html
    assert "Delete this rule…" in html
    response = as_operator.post(f"/alerts/rules/{rule.pk}/edit/", _rule_post(
        threshold="750.5", function="img_*", metric="failure_rate", threshold_unused=None,
        window_seconds="900", channels=[str(mail.pk)], enabled=None))
    assert response.status_code == 302
    rule.refresh_from_db()
    assert (rule.threshold, rule.function, rule.metric, rule.window_seconds) == (
        750.5, "img_*", "failure_rate", 900)
    assert rule.enabled is False and list(rule.channels.all()) == [mail]
    assert rule.server is None

    response = as_operator.post(f"/alerts/rules/{rule.pk}/delete/")
    assert response.status_code == 302 and response["Location"] == "/alerts/"
    assert not Rule.objects.filter(pk=rule.pk).exists()
    assert as_operator.get(f"/alerts/rules/{rule.pk}/edit/").status_code == 404


def _api_errors(client, body: dict) -> dict[str, list[str]]:
    response = client.post("/api/v1/alert-rules/", body, content_type="application/json")
    assert response.status_code == 400
    return response.json()["error"]["fields"]


def test_form_refuses_what_the_api_refuses_in_the_same_words(as_operator, world):
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
        response = as_operator.post("/alerts/rules/new/", _rule_post(**form_over))
        assert response.status_code == 400, field
        html = response.content.decode()
        shown = _field_errors(html, field)
        api = {"name": "Images backed up", "metric": "queue_depth", "function": "img*",
               "operator": ">", "threshold": 500, "severity": "critical"}
        api.update(api_over)
        if field == "threshold" and not api_over:
            del api["threshold"]
        assert shown and shown == _api_errors(as_operator, api)[field], (field, shown)
        assert "The rule was not saved" in html
    assert Rule.objects.count() == count
    # what was typed stays in the form
    html = as_operator.post("/alerts/rules/new/", _rule_post(threshold="lots", name="Keep me")
                            ).content.decode()
    assert 'name="name" value="Keep me"' in html and 'name="threshold" value="lots"' in html


def test_window_field_is_shown_only_for_windowed_metrics(as_operator, world):
    html = as_operator.get("/alerts/rules/new/").content.decode()
    style = re.search(r"<style>(.*?)</style>", html, re.S).group(1)
    for metric in ("failure_rate", "runtime_p95", "drain_time"):
        assert f'#id_metric option:checked[value="{metric}"]' in style
    window_rule = next(line for line in style.splitlines() if ".field-window_seconds" in line)
    assert "queue_depth" not in window_rule and "display: flex" in window_rule
    # and the threshold's meaning follows the metric
    assert '.metric-hint[data-metric="failure_rate"]' in style
    assert 'data-metric="failure_rate">A fraction of finished jobs: 0.05 = 5 %<' in html


def test_toggle_a_rule_over_htmx(as_operator, world):
    deep = world["rules"]["deep"]
    response = as_operator.post(f"/alerts/rules/{deep.pk}/toggle/", {"enabled": "0"}, **HX)
    row = response.content.decode().strip()
    assert row.startswith(f'<tr id="rule-{deep.pk}" class="rule-row is-disabled"')
    assert 'aria-checked="false"' in row
    deep.refresh_from_db()
    assert deep.enabled is False
    # the same click again (a double click) does not flip it back
    as_operator.post(f"/alerts/rules/{deep.pk}/toggle/", {"enabled": "0"}, **HX)
    deep.refresh_from_db()
    assert deep.enabled is False
    as_operator.post(f"/alerts/rules/{deep.pk}/toggle/", {"enabled": "1"}, **HX)
    deep.refresh_from_db()
    assert deep.enabled is True


# ---------------------------------------------------------------- one alert


def test_alert_page_shows_rule_timeline_notifications_and_snapshot(as_viewer, world):
    alert = world["critical"]
    html = as_viewer.get(f"/alerts/{alert.pk}/").content.decode()
    assert '<h1 id="alert-title">Transcoding has no workers</h1>' in html
    assert 'data-state="firing"' in html and "workers of transcode_* &lt; 1" in html
    assert re.search(r'<span class="stat-label">Value</span><span class="stat-value" '
                     r'data-value>0</span>', html)
    assert 'data-kind="fired"' in html and 'data-kind="open"' in html
    # notifications: one per channel, with their outcome
    notes = html[html.index('id="notes-title"'):html.index('id="snapshot-title"')]
    assert sorted(re.findall(r'data-status="(\w+)"', notes)) == ["failed", "pending", "sent"]
    assert "Connection refused" in notes and "retrying" in notes and "#ops on Slack" in notes
    # the snapshot, rendered like the overview and workers pages
    snap = html[html.index('id="snapshot-title"'):]
    functions = re.findall(r'<tr class="queue-row[^"]*" data-function="([^"]+)"', snap)
    assert functions == ["nightly_report", "resize_image", "send_email", "transcode_video"]
    assert re.search(r'<tr class="queue-row row-no-workers is-alert-queue" '
                     r'data-function="transcode_video"', snap)
    assert 'class="flag flag-bad">no workers' in snap and "this alert" in snap
    workers = re.findall(r'<tr class="worker-row (is-busy|is-idle)" data-worker="([^"]+)"', snap)
    assert ("is-busy", "img-worker-1") in workers and len(workers) == 3
    assert "H:gm-prod-1:4711" in snap  # the job that worker was running then
    connected = re.findall(r'<td class="when">([^<]*)</td>', snap)
    assert len(connected) == 3 and all(c and not c.startswith("-") for c in connected)
    # an operator also gets the actions
    assert "Acknowledge</button>" not in html


def test_alert_page_actions_for_operators(as_operator, world):
    alert = world["critical"]
    html = as_operator.get(f"/alerts/{alert.pk}/").content.decode()
    assert "Acknowledge</button>" in html and "Silence 1 h" in html and "Edit rule" in html
    response = as_operator.post(f"/alerts/{alert.pk}/ack/", {"next": f"/alerts/{alert.pk}/"})
    assert response["Location"] == f"/alerts/{alert.pk}/"
    html = as_operator.get(f"/alerts/{alert.pk}/").content.decode()
    assert "acknowledged by opal" in html and 'data-kind="acknowledged"' in html
    resolved = world["history"][2]
    html = as_operator.get(f"/alerts/{resolved.pk}/").content.decode()
    assert 'data-state="resolved"' in html and 'data-kind="resolved"' in html
    assert "Lasted" in html and "47 min" in html and "Acknowledge</button>" not in html
    assert "No queue was listed." in html and "No worker was connected" in html
    assert as_operator.get("/alerts/999999/").status_code == 404


# ---------------------------------------------------------------- channels


def test_admin_manages_channels(as_admin, world):
    html = as_admin.get("/alerts/channels/").content.decode()
    for name in ("#ops on Slack", "Ops e-mail", "Incident webhook"):
        assert name in html
    assert "s3cret" not in html and "TIiajkdnlazkcOXrIdevi7F" not in html  # masked
    assert "mailto://alerts:****@example.com" in html
    for example in ("mailto://", "slack://", "discord://", "tgram://", "json://"):
        assert example in html
    hook = world["hook"]
    row = re.search(rf'<tr id="channel-{hook.pk}" class="channel-row is-failing".*?</tr>',
                    html, re.S).group(0)
    assert "1 failing in 24 h" in row

    response = as_admin.post("/alerts/channels/", {"name": "Pager", "url": "nonsense"})
    assert response.status_code == 400
    assert _field_errors(response.content.decode(), "url") == [
        "Not an apprise URL apprise can use (e.g. mailto://…, slack://…, json://…)."]
    response = as_admin.post("/alerts/channels/", {"name": "#ops on Slack",
                                                   "url": "json://example.com/x"})
    assert response.status_code == 400
    assert _field_errors(response.content.decode(), "name") == [
        "channel with this name already exists."]

    response = as_admin.post("/alerts/channels/", {"name": "Pager",
                                                   "url": " json://pager.example/hook "})
    assert response.status_code == 302
    pager = Channel.objects.get(name="Pager")
    assert pager.url == "json://pager.example/hook" and pager.enabled
    as_admin.post(f"/alerts/channels/{pager.pk}/toggle/")
    pager.refresh_from_db()
    assert pager.enabled is False
    html = as_admin.get("/alerts/channels/").content.decode()
    assert re.search(rf'<tr id="channel-{pager.pk}" class="channel-row is-disabled"', html)
    assert "disabled: rules no longer notify it" in html
    response = as_admin.post(f"/alerts/channels/{pager.pk}/delete/")
    assert response.status_code == 302 and not Channel.objects.filter(pk=pager.pk).exists()


def test_send_test_reaches_a_real_receiver(as_admin, db):
    receiver = Receiver()
    try:
        channel = Channel.objects.create(name="local hook", url=receiver.url)
        response = as_admin.post(f"/alerts/channels/{channel.pk}/test/", **HX)
        html = response.content.decode()
        assert response.status_code == 200 and 'class="test-ok" data-ok="true"' in html
        assert "Sent at" in html
        assert len(receiver.messages) == 1
        assert receiver.messages[0]["title"] == "Gearman HQ test notification"
        note = Notification.objects.get(channel=channel, kind="test")
        assert (note.status, note.attempts, note.last_error) == ("sent", 1, "")
    finally:
        receiver.close()


def test_send_test_to_a_closed_port_shows_apprise_error(as_admin, db):
    port = free_port()  # bound and released: nothing listens there
    channel = Channel.objects.create(name="dead hook", url=f"json://127.0.0.1:{port}/hook")
    response = as_admin.post(f"/alerts/channels/{channel.pk}/test/", **HX)
    html = unescape(response.content.decode())
    assert response.status_code == 200 and 'data-ok="false"' in html
    note = Notification.objects.get(channel=channel, kind="test")
    assert note.status == "failed" and note.last_error
    # apprise's own words, without its log line's date and level
    shown = re.search(r"<strong>Failed:</strong> (.*?)</span>", html).group(1)
    assert shown and shown in note.last_error and not shown[0].isdigit()
    assert "connection" in shown.lower()
    # without htmx: back to the page with the error as a message
    response = as_admin.post(f"/alerts/channels/{channel.pk}/test/", follow=True)
    assert "Test to “dead hook” failed:" in unescape(response.content.decode())


# ---------------------------------------------------------------- the header


def test_every_page_shows_firing_alerts_in_the_header(as_viewer, world):
    for url in ("/", "/jobs/", "/workers/", "/alerts/"):
        html = as_viewer.get(url).content.decode()
        count = re.search(r'<span id="alerts-nav-count" class="nav-count"[^>]*>(\d+)</span>',
                          html)
        assert count and count.group(1) == "2", url
        strip = html[html.index('id="alert-strip"'):html.index('<main class="page">')]
        assert 'data-hq-live="alert"' in strip and "2 alerts firing" in strip
        items = re.findall(r'class="strip-item sev-(\w+)( is-acked)?" href="/alerts/(\d+)/"',
                           strip)
        assert items == [("critical", "", str(world["critical"].pk)),
                         ("warning", " is-acked", str(world["warning"].pk))]
    strip = as_viewer.get("/?poll=3").content.decode()
    assert 'data-hx-trigger="hq:changed, every 3s"' in strip


def test_header_strip_refresh_updates_the_count_out_of_band(as_viewer, world):
    response = as_viewer.get("/alerts/strip/", **HX)
    html = response.content.decode()
    assert "<html" not in html and "2 alerts firing" in html
    assert re.search(r'<span id="alerts-nav-count" class="nav-count"[^>]*hx-swap-oob="true"'
                     r'[^>]*>2</span>', html)
    Alert.objects.filter(state="firing").update(state="resolved",
                                                resolved_at=timezone.now())
    html = as_viewer.get("/alerts/strip/", **HX).content.decode()
    assert 'class="alert-strip"' not in html and "strip-item" not in html
    assert re.search(r'hx-swap-oob="true" hidden>0</span>', html)
    page = as_viewer.get("/jobs/").content.decode()
    assert 'id="alert-strip"' in page and "strip-item" not in page  # ready for the next


def test_the_header_costs_a_count_and_one_small_query(rf, world, django_assert_num_queries):
    request = rf.get("/")
    request.user = _user("vera", Role.VIEWER)
    header = FiringAlerts(request)
    with django_assert_num_queries(3):  # the role, the count, the rows
        assert header.visible and header.count == 2
        assert [a.rule.name for a in header.rows] == ["Transcoding has no workers",
                                                      "Mail waits too long"]
        assert header.more == 0
    Alert.objects.update(state="resolved")
    quiet = FiringAlerts(request)
    with django_assert_num_queries(2):  # nothing fires: no row query
        assert quiet.count == 0 and quiet.rows == []


# ---------------------------------------------------------------- the browser test's path


def test_a_rule_made_in_the_form_fires_on_fresh_data(client, db):
    """What tests/browser/test_alerts_ui.py does through Chromium, here without one."""
    client.force_login(_user("opal", Role.OPERATOR))
    as_operator = client
    as_operator.post("/alerts/rules/new/", _rule_post(
        name="Images pile up", threshold="5", for_seconds="0", severity="warning"))
    server = Server.objects.create(name="gm-img")
    ServerState.objects.create(server=server, up=True, polled_at=timezone.now())
    QueueSnapshot.objects.create(server=server, function="img_resize", total=20, running=0,
                                 workers=0, at=timezone.now())
    tick = services.evaluate(refresh=False)
    assert len(tick.fired) == 1
    assert RuleState.objects.get().state == "firing"
    html = as_operator.get("/alerts/").content.decode()
    assert "Images pile up" in html and "img_resize" in html and "1 alert firing" in html


def test_metric_text_speaks_each_metrics_unit():
    assert metric_text("queue_depth", 1204) == "1,204"
    assert metric_text("workers", 0) == "0"
    assert metric_text("failure_rate", 0.125) == "12 %"
    assert metric_text("failure_rate", 0.05) == "5 %"
    assert metric_text("failure_rate", 0.014) == "1.4 %"
    assert metric_text("runtime_p95", 558) == "558 ms"
    assert metric_text("oldest_queued_age", 243) == "4 min 3 s"
    assert metric_text("drain_time", 365 * 86400.0) == "never"
    assert metric_text("running_too_long", 0) == "0 s"
    assert metric_text("queue_depth", None) == "—"
    assert metric_text("queue_depth", 2.5) == "2.5"


def test_clean_error_drops_apprises_log_prefix():
    line = "2026-11-24 02:57:49,592 - WARNING - A Connection error occurred sending JSON."
    assert clean_error(line) == "A Connection error occurred sending JSON."
    assert clean_error("plain words") == "plain words" and clean_error(None) == ""
