"""The alerts pages through Django's test client, on the real Postgres: who may do what,
/alerts/ with its history, ack over htmx, one alert's page with its snapshot, and the header
on every page. The forms (rules and channels) are in ``test_alert_forms.py``.

The world is ``alert_world`` (``tests.support.worlds.build_alert_world``), the one the
browser tests see; its operator is ``opal``, the ``operator`` fixture's user.
"""

from __future__ import annotations

import re

from django.utils import timezone

from alerts.models import Alert, Channel, Rule
from alerts.presenters import FiringAlerts, clean_error, metric_text
from hq.roles import MEMO
from tests.support.users import make_user
from tests.support.web import HX, rule_form

# ---------------------------------------------------------------- who may do what


def test_anonymous_goes_to_sign_in(client, db):
    for url in ("/alerts/", "/alerts/rules/new/", "/alerts/channels/", "/alerts/1/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/")
    response = client.get("/alerts/", **HX)  # a partial would swap the login form in
    assert response.status_code == 200 and response["HX-Redirect"].startswith("/login/")


def test_viewer_reads_but_cannot_change_anything(viewer, alert_world):
    client = viewer
    html = client.get("/alerts/").content.decode()
    assert "Transcoding has no workers" in html and "Mail waits too long" in html
    assert "workers of transcode_* &lt; 1" in html  # the rule as a sentence
    assert "New rule" not in html and 'class="button small-button ack-button"' not in html
    assert 'role="switch"' not in html and "/edit/" not in html
    assert client.get(f"/alerts/{alert_world['critical'].pk}/").status_code == 200

    alert = alert_world["critical"]
    assert client.post(f"/alerts/{alert.pk}/ack/").status_code == 403
    assert client.post(f"/alerts/{alert.pk}/ack/", **HX).status_code == 403
    alert.refresh_from_db()
    assert alert.acknowledged_at is None

    rules = Rule.objects.count()
    response = client.get("/alerts/rules/new/")
    assert response.status_code == 403
    assert "Only operators and admins" in response.content.decode()
    assert client.post("/alerts/rules/new/", rule_form()).status_code == 403
    deep = alert_world["rules"]["deep"]
    assert client.get(f"/alerts/rules/{deep.pk}/edit/").status_code == 403
    assert client.post(f"/alerts/rules/{deep.pk}/toggle/").status_code == 403
    assert client.post(f"/alerts/rules/{deep.pk}/delete/").status_code == 403
    assert Rule.objects.count() == rules and Rule.objects.get(pk=deep.pk).enabled

    assert client.get("/alerts/channels/").status_code == 403
    assert client.post(f"/alerts/channels/{alert_world['slack'].pk}/test/").status_code == 403


def test_operator_acts_on_rules_and_alerts_but_not_channels(operator, alert_world):
    html = operator.get("/alerts/").content.decode()
    assert "New rule" in html and 'class="button small-button ack-button"' in html
    assert f'href="/alerts/rules/{alert_world["rules"]["deep"].pk}/edit/"' in html
    assert "Channels</a>" not in html  # the channels button is for admins
    assert operator.get("/alerts/channels/").status_code == 403
    before = Channel.objects.count()
    response = operator.post("/alerts/channels/", {"name": "x", "url": "json://a/b"})
    assert response.status_code == 403 and Channel.objects.count() == before
    slack = alert_world["slack"]
    assert operator.post(f"/alerts/channels/{slack.pk}/toggle/").status_code == 403
    assert operator.post(f"/alerts/channels/{slack.pk}/delete/").status_code == 403
    assert Channel.objects.get(pk=slack.pk).enabled


def test_a_user_without_a_role_sees_no_alerts(client, alert_world):
    client.force_login(make_user("nobody", None))
    response = client.get("/alerts/")
    assert response.status_code == 403
    html = response.content.decode()
    assert 'href="/alerts/"' not in html and "alert-strip" not in html


# ---------------------------------------------------------------- /alerts/


def test_alerts_page_orders_firing_first_and_lists_rules_and_history(viewer, alert_world):
    html = viewer.get("/alerts/").content.decode()
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


def test_history_filter(viewer, alert_world):
    html = viewer.get("/alerts/?state=resolved").content.decode()
    history = html[html.index('id="history-title"'):]
    assert set(re.findall(r'<tr class="history-row state-row-(\w+)', history)) == {"resolved"}
    assert '<a href="?state=resolved#history" class="active">' in history
    html = viewer.get("/alerts/?state=firing").content.decode()
    history = html[html.index('id="history-title"'):]
    assert re.findall(r'<tr class="history-row state-row-(\w+)', history) == ["firing"] * 2


def test_alerts_page_answers_htmx_with_its_fragment(viewer, alert_world):
    response = viewer.get("/alerts/", **HX)
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html
    assert 'id="firing-title"' in html and "Transcoding has no workers" in html
    assert "HX-Request" in response["Vary"]
    page = viewer.get("/alerts/?poll=2").content.decode()
    assert 'data-hq-live="alert"' in page and 'hx-trigger="hq:changed, every 2s"' in page


def test_nothing_firing_says_so(viewer, db):
    html = viewer.get("/alerts/").content.decode()
    assert "Nothing is firing." in html and "No rules yet" in html and "No alerts yet" in html


# ---------------------------------------------------------------- ack


def test_ack_over_htmx_returns_the_updated_row(operator, alert_world):
    alert = alert_world["critical"]
    response = operator.post(f"/alerts/{alert.pk}/ack/", **HX)
    assert response.status_code == 200
    row = response.content.decode().strip()
    assert row.startswith(f'<tr class="alert-row sev-row-critical is-acked" id="alert-{alert.pk}"')
    assert row.endswith("</tr>") and "opal" in row and "not acknowledged" not in row
    assert "ack-button" not in row and "Silence 1 h" in row  # can still silence it
    alert.refresh_from_db()
    assert alert.acknowledged_by == alert_world["operator"] and alert.silenced_until is None

    response = operator.post(f"/alerts/{alert.pk}/ack/", {"silence_seconds": "3600"}, **HX)
    alert.refresh_from_db()
    assert alert.silenced_until is not None
    left = (alert.silenced_until - timezone.now()).total_seconds()
    assert 3500 < left <= 3600
    assert "silenced until" in response.content.decode()
    assert "Silence 1 h" not in response.content.decode()


def test_ack_without_htmx_goes_back(operator, alert_world):
    alert = alert_world["critical"]
    response = operator.post(f"/alerts/{alert.pk}/ack/", {"next": "/alerts/"})
    assert response.status_code == 302 and response["Location"] == "/alerts/"
    response = operator.post(f"/alerts/{alert.pk}/ack/", {"next": "https://evil.example/"})
    assert response["Location"] == f"/alerts/{alert.pk}/"


def test_ack_of_a_resolved_alert_says_why(operator, alert_world):
    old = alert_world["history"][0]
    response = operator.post(f"/alerts/{old.pk}/ack/", **HX)
    html = response.content.decode()
    assert response.status_code == 200 and "Only a firing alert can be acknowledged." in html
    assert "ack-button" not in html
    assert operator.post("/alerts/999999/ack/", **HX).status_code == 404


# ---------------------------------------------------------------- one alert


def test_alert_page_shows_rule_timeline_notifications_and_snapshot(viewer, alert_world):
    alert = alert_world["critical"]
    html = viewer.get(f"/alerts/{alert.pk}/").content.decode()
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


def test_alert_page_actions_for_operators(operator, alert_world):
    alert = alert_world["critical"]
    html = operator.get(f"/alerts/{alert.pk}/").content.decode()
    assert "Acknowledge</button>" in html and "Silence 1 h" in html and "Edit rule" in html
    response = operator.post(f"/alerts/{alert.pk}/ack/", {"next": f"/alerts/{alert.pk}/"})
    assert response["Location"] == f"/alerts/{alert.pk}/"
    html = operator.get(f"/alerts/{alert.pk}/").content.decode()
    assert "acknowledged by opal" in html and 'data-kind="acknowledged"' in html
    resolved = alert_world["history"][2]
    html = operator.get(f"/alerts/{resolved.pk}/").content.decode()
    assert 'data-state="resolved"' in html and 'data-kind="resolved"' in html
    assert "Lasted" in html and "47 min" in html and "Acknowledge</button>" not in html
    assert "No queue was listed." in html and "No worker was connected" in html
    assert operator.get("/alerts/999999/").status_code == 404


# ---------------------------------------------------------------- the header


def test_every_page_shows_firing_alerts_in_the_header(viewer, alert_world):
    for url in ("/", "/jobs/", "/workers/", "/alerts/"):
        html = viewer.get(url).content.decode()
        count = re.search(r'<span id="alerts-nav-count" class="nav-count"[^>]*>(\d+)</span>',
                          html)
        assert count and count.group(1) == "2", url
        strip = html[html.index('id="alert-strip"'):html.index('<main class="page">')]
        assert 'data-hq-live="alert"' in strip and "2 alerts firing" in strip
        items = re.findall(r'class="strip-item sev-(\w+)( is-acked)?" href="/alerts/(\d+)/"',
                           strip)
        assert items == [("critical", "", str(alert_world["critical"].pk)),
                         ("warning", " is-acked", str(alert_world["warning"].pk))]
    strip = viewer.get("/?poll=3").content.decode()
    assert 'data-hx-trigger="hq:changed, every 3s"' in strip


def test_header_strip_refresh_updates_the_count_out_of_band(viewer, alert_world):
    response = viewer.get("/alerts/strip/", **HX)
    html = response.content.decode()
    assert "<html" not in html and "2 alerts firing" in html
    assert re.search(r'<span id="alerts-nav-count" class="nav-count"[^>]*hx-swap-oob="true"'
                     r'[^>]*>2</span>', html)
    Alert.objects.filter(state="firing").update(state="resolved",
                                                resolved_at=timezone.now())
    html = viewer.get("/alerts/strip/", **HX).content.decode()
    assert 'class="alert-strip"' not in html and "strip-item" not in html
    assert re.search(r'hx-swap-oob="true" hidden>0</span>', html)
    page = viewer.get("/jobs/").content.decode()
    assert 'id="alert-strip"' in page and "strip-item" not in page  # ready for the next


def test_the_header_costs_a_count_and_one_small_query(rf, vera, alert_world,
                                                      django_assert_num_queries):
    request = rf.get("/")
    vars(vera).pop(MEMO, None)  # a fresh request's user: role not looked up yet
    request.user = vera
    header = FiringAlerts(request)
    with django_assert_num_queries(3):  # the role, the count, the rows
        assert header.visible and header.count == 2
        assert [a.rule.name for a in header.rows] == ["Transcoding has no workers",
                                                      "Mail waits too long"]
        assert header.more == 0
    Alert.objects.update(state="resolved")
    quiet = FiringAlerts(request)
    with django_assert_num_queries(1):  # the role is known by now; nothing fires: no rows
        assert quiet.count == 0 and quiet.rows == []


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
