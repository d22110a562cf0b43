"""The alerts REST API (v1 contract): rules CRUD, alert list and ack, channels CRUD and
test, and the delivery outbox retrying a broken channel with backoff.

Bearer tokens of real users per role (``api_viewer``, ``api_operator``, ``api_admin``:
vera, opal and ada); channels are apprise ``json://`` URLs pointing at a
local HTTP receiver run by the test (or at a closed port)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from alerts import delivery, services
from alerts.models import Alert, Channel, Notification, Rule
from jobs.models import Server
from monitoring.models import QueueSnapshot
from tests.receiver import Receiver
from tests.support.stack import free_port

pytestmark = pytest.mark.django_db

RULES = "/api/v1/alert-rules/"
ALERTS = "/api/v1/alerts/"
CHANNELS = "/api/v1/channels/"


def closed_url() -> str:
    return f"json://127.0.0.1:{free_port()}/hook"


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content)
    body = response.json()
    assert set(body) == {"error"}
    assert {"code", "message"} <= set(body["error"])
    return body["error"]


GOOD_RULE = {"name": "resize backlog", "metric": "queue_depth", "function": "resize_*",
             "operator": ">", "threshold": 500, "for_seconds": 120}


# --------------------------------------------------------------------------- rules


def test_rule_crud_by_operator(api_operator: APIClient) -> None:
    server = Server.objects.create(name="gm1")
    ch = Channel.objects.create(name="ops", url=closed_url())
    r = api_operator.post(RULES, {**GOOD_RULE, "server": "gm1", "channels": [ch.id],
                              "severity": "critical", "window_seconds": 900}, format="json")
    assert r.status_code == 201, r.content
    created = r.json()
    assert {k: created[k] for k in ("name", "metric", "function", "server", "operator",
                                    "threshold", "for_seconds", "window_seconds",
                                    "severity", "channels", "enabled")} == {
        "name": "resize backlog", "metric": "queue_depth", "function": "resize_*",
        "server": "gm1", "operator": ">", "threshold": 500.0, "for_seconds": 120,
        "window_seconds": 900, "severity": "critical", "channels": [ch.id], "enabled": True}
    rule = Rule.objects.get(pk=created["id"])
    assert rule.server == server and list(rule.channels.all()) == [ch]

    listed = api_operator.get(RULES).json()
    assert {"next", "previous", "results"} <= set(listed)
    assert [x["id"] for x in listed["results"]] == [rule.id]
    assert api_operator.get(f"{RULES}{rule.id}/").json()["threshold"] == 500.0

    r = api_operator.patch(f"{RULES}{rule.id}/", {"threshold": 750.5, "enabled": False},
                       format="json")
    assert r.status_code == 200 and r.json()["threshold"] == 750.5
    rule.refresh_from_db()
    assert rule.threshold == 750.5 and rule.enabled is False

    r = api_operator.put(f"{RULES}{rule.id}/", {**GOOD_RULE, "metric": "workers", "operator": "<",
                                            "threshold": 1}, format="json")
    assert r.status_code == 200, r.content
    rule.refresh_from_db()
    assert (rule.metric, rule.operator, rule.threshold) == ("workers", "<", 1)

    assert api_operator.delete(f"{RULES}{rule.id}/").status_code == 204
    assert not Rule.objects.filter(pk=rule.id).exists()
    error_of(api_operator.get(f"{RULES}{rule.id}/"), 404)


def test_rule_defaults(api_operator: APIClient) -> None:
    r = api_operator.post(RULES, {"name": "any", "metric": "stranded", "operator": ">",
                              "threshold": 0}, format="json")
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["function"] == "*" and body["server"] is None and body["channels"] == []
    assert body["for_seconds"] == 0 and body["window_seconds"] == 300
    assert body["severity"] == "warning" and body["enabled"] is True


def test_viewer_reads_rules_but_cannot_change_them(api_viewer: APIClient) -> None:
    rule = Rule.objects.create(name="r", metric="queue_depth", operator=">", threshold=5)
    assert api_viewer.get(RULES).status_code == 200
    assert api_viewer.get(f"{RULES}{rule.id}/").json()["name"] == "r"
    assert error_of(api_viewer.post(RULES, GOOD_RULE, format="json"), 403)["code"] == \
        "permission_denied"
    error_of(api_viewer.patch(f"{RULES}{rule.id}/", {"threshold": 1}, format="json"), 403)
    error_of(api_viewer.delete(f"{RULES}{rule.id}/"), 403)
    assert Rule.objects.get(pk=rule.id).threshold == 5


def test_no_token_is_401(db: None) -> None:
    error_of(APIClient().get(RULES), 401)
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    error_of(bad.get(RULES), 401)


@pytest.mark.parametrize(("field", "value"), [
    ("metric", "queue_length"),
    ("metric", None),
    ("window_seconds", -300),
    ("window_seconds", "ten"),
    ("for_seconds", -1),
    ("function", 5),
    ("function", ["resize_*"]),
    ("function", ""),
    ("threshold", "lots"),
    ("threshold", "500"),
    ("threshold", True),
    ("threshold", None),
    ("operator", "=="),
    ("operator", "gt"),
    ("severity", "panic"),
    ("server", "no-such-server"),
    ("channels", [999999]),
])
def test_bad_rule_is_400_naming_the_field(api_operator: APIClient, field: str,
                                          value: object) -> None:
    err = error_of(api_operator.post(RULES, {**GOOD_RULE, field: value}, format="json"), 400)
    assert err["code"] == "invalid"
    assert list(err["fields"]) == [field]
    assert err["message"].startswith(f"{field}:")
    assert not Rule.objects.exists()


def test_missing_fields_are_named(api_operator: APIClient) -> None:
    err = error_of(api_operator.post(RULES, {"name": "x"}, format="json"), 400)
    assert {"metric", "operator", "threshold"} <= set(err["fields"])


def test_bad_patch_leaves_the_rule_alone(api_operator: APIClient) -> None:
    rule = Rule.objects.create(name="r", metric="queue_depth", operator=">", threshold=5)
    err = error_of(api_operator.patch(f"{RULES}{rule.id}/", {"threshold": "6"}, format="json"),
                   400)
    assert list(err["fields"]) == ["threshold"]
    assert Rule.objects.get(pk=rule.id).threshold == 5


# --------------------------------------------------------------------------- alerts


@pytest.fixture
def alerts(db: None) -> dict[str, Alert]:
    server = Server.objects.create(name="gm1")
    rule = Rule.objects.create(name="backlog", metric="queue_depth", operator=">",
                               threshold=5, severity="critical")
    now = timezone.now()
    firing = Alert.objects.create(rule=rule, server=server, function="resize", value=20,
                                  peak=25, started_at=now - timedelta(minutes=5))
    resolved = Alert.objects.create(rule=rule, server=server, function="thumb", value=1,
                                    peak=9, started_at=now - timedelta(hours=1),
                                    state=Alert.RESOLVED, resolved_at=now)
    return {"firing": firing, "resolved": resolved}


def test_alerts_list_and_state_filter(api_viewer: APIClient, alerts: dict[str, Alert]) -> None:
    everything = api_viewer.get(ALERTS).json()["results"]
    assert {a["id"] for a in everything} == {a.id for a in alerts.values()}
    (row,) = api_viewer.get(ALERTS, {"state": "firing"}).json()["results"]
    assert row["id"] == alerts["firing"].id
    assert {"id", "rule", "function", "server", "state", "value", "started_at",
            "resolved_at", "acknowledged_by"} <= set(row)
    assert row["state"] == "firing" and row["function"] == "resize" and row["server"] == "gm1"
    assert row["value"] == 20 and row["resolved_at"] is None and row["acknowledged_by"] is None
    assert row["rule"]["name"] == "backlog" and row["rule"]["severity"] == "critical"
    assert row["started_at"].endswith("Z")
    (row,) = api_viewer.get(ALERTS, {"state": "resolved"}).json()["results"]
    assert row["id"] == alerts["resolved"].id and row["resolved_at"] is not None
    detail = api_viewer.get(f"{ALERTS}{alerts['firing'].id}/").json()
    assert "snapshot" in detail


def test_alerts_bogus_state_is_400(api_viewer: APIClient, alerts: dict[str, Alert]) -> None:
    err = error_of(api_viewer.get(ALERTS, {"state": "bogus"}), 400)
    assert list(err["fields"]) == ["state"]


def test_operator_acks_a_firing_alert(api_operator: APIClient, alerts: dict[str, Alert]) -> None:
    alert = alerts["firing"]
    r = api_operator.post(f"{ALERTS}{alert.id}/ack/", {"silence_seconds": 3600}, format="json")
    assert r.status_code == 200, r.content
    assert r.json()["acknowledged_by"] == "opal" and r.json()["state"] == "firing"
    alert.refresh_from_db()
    assert alert.acknowledged_by.username == "opal" and alert.acknowledged_at is not None
    assert alert.silenced_until - alert.acknowledged_at == timedelta(seconds=3600)
    row = api_operator.get(ALERTS, {"state": "firing"}).json()["results"][0]
    assert row["acknowledged_by"] == "opal"


def test_ack_without_a_body(api_operator: APIClient, alerts: dict[str, Alert]) -> None:
    r = api_operator.post(f"{ALERTS}{alerts['firing'].id}/ack/")
    assert r.status_code == 200, r.content
    alerts["firing"].refresh_from_db()
    assert alerts["firing"].silenced_until is None


def test_viewer_cannot_ack(api_viewer: APIClient, alerts: dict[str, Alert]) -> None:
    error_of(api_viewer.post(f"{ALERTS}{alerts['firing'].id}/ack/"), 403)
    alerts["firing"].refresh_from_db()
    assert alerts["firing"].acknowledged_by is None


def test_ack_of_a_resolved_alert_is_409(api_operator: APIClient, alerts: dict[str, Alert]) -> None:
    assert error_of(api_operator.post(f"{ALERTS}{alerts['resolved'].id}/ack/"), 409)["code"] == \
        "conflict"


def test_ack_of_a_missing_alert_is_404(api_operator: APIClient, alerts: dict[str, Alert]) -> None:
    error_of(api_operator.post(f"{ALERTS}999999/ack/"), 404)


def test_ack_with_a_negative_silence_is_400(api_operator: APIClient,
                                           alerts: dict[str, Alert]) -> None:
    err = error_of(api_operator.post(f"{ALERTS}{alerts['firing'].id}/ack/",
                                 {"silence_seconds": -5}, format="json"), 400)
    assert list(err["fields"]) == ["silence_seconds"]


def test_ack_with_a_non_numeric_id_is_404(api_operator: APIClient) -> None:
    error_of(api_operator.post(f"{ALERTS}abc/ack/"), 404)


# --------------------------------------------------------------------------- channels


def test_channel_crud_by_admin(api_admin: APIClient, receiver: Receiver) -> None:
    r = api_admin.post(CHANNELS, {"name": "ops", "url": receiver.url}, format="json")
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["name"] == "ops" and body["url"] == receiver.url and body["enabled"] is True
    cid = body["id"]
    assert [c["id"] for c in api_admin.get(CHANNELS).json()["results"]] == [cid]
    r = api_admin.patch(f"{CHANNELS}{cid}/", {"enabled": False}, format="json")
    assert r.status_code == 200 and r.json()["enabled"] is False
    r = api_admin.put(f"{CHANNELS}{cid}/", {"name": "ops2", "url": "mailto://u:p@example.com"},
                  format="json")
    assert r.status_code == 200, r.content
    assert Channel.objects.get(pk=cid).name == "ops2"
    assert api_admin.delete(f"{CHANNELS}{cid}/").status_code == 204
    assert not Channel.objects.exists()


def test_channels_are_admin_only(api_operator: APIClient, api_viewer: APIClient) -> None:
    ch = Channel.objects.create(name="ops", url=closed_url())
    for client in (api_operator, api_viewer):
        error_of(client.get(CHANNELS), 403)
        error_of(client.post(CHANNELS, {"name": "x", "url": closed_url()}, format="json"), 403)
        error_of(client.delete(f"{CHANNELS}{ch.id}/"), 403)
        error_of(client.post(f"{CHANNELS}{ch.id}/test/"), 403)
    assert Channel.objects.count() == 1


@pytest.mark.parametrize("url", ["not a url", "nosuchscheme://host/path", "json:/", ""])
def test_bad_apprise_url_is_400(api_admin: APIClient, url: str) -> None:
    err = error_of(api_admin.post(CHANNELS, {"name": "bad", "url": url}, format="json"), 400)
    assert list(err["fields"]) == ["url"]
    assert not Channel.objects.exists()


def test_channel_test_reaches_the_receiver(api_admin: APIClient, receiver: Receiver) -> None:
    ch = Channel.objects.create(name="ops", url=receiver.url)
    r = api_admin.post(f"{CHANNELS}{ch.id}/test/")
    assert r.status_code == 200, r.content
    assert r.json() == {"ok": True, "error": None}
    assert len(receiver.messages) == 1
    assert receiver.messages[0]["title"] == "Gearman HQ test notification"
    assert "'ops'" in receiver.messages[0]["message"]
    note = Notification.objects.get(channel=ch)
    assert (note.kind, note.status, note.attempts) == ("test", "sent", 1)


def test_channel_test_to_a_closed_port_is_502(api_admin: APIClient) -> None:
    ch = Channel.objects.create(name="down", url=closed_url())
    r = api_admin.post(f"{CHANNELS}{ch.id}/test/")
    assert r.status_code == 502, r.content
    body = r.json()
    assert body["ok"] is False and isinstance(body["error"], str) and body["error"]
    note = Notification.objects.get(channel=ch)
    assert note.status == "failed" and note.last_error == body["error"]


def test_channel_test_of_a_missing_channel_is_404(api_admin: APIClient) -> None:
    error_of(api_admin.post(f"{CHANNELS}999999/test/"), 404)


# --------------------------------------------------------------------------- delivery


def _fire_backlog(channel: Channel) -> Alert:
    server = Server.objects.create(name="gm1")
    rule = Rule.objects.create(name="backlog", metric="queue_depth", operator=">",
                               threshold=5)
    rule.channels.add(channel)
    QueueSnapshot.objects.create(server=server, function="resize", at=timezone.now(),
                                 total=20, running=0, workers=0)
    (alert_id,) = services.evaluate(refresh=False).fired
    return Alert.objects.get(pk=alert_id)


def test_broken_channel_fails_then_retries_with_backoff_until_it_works() -> None:
    port = free_port()
    channel = Channel.objects.create(name="hook", url=f"json://127.0.0.1:{port}/hook")
    alert = _fire_backlog(channel)
    assert alert.state == Alert.FIRING  # a broken channel does not stop the alert

    before = timezone.now()
    assert delivery.deliver_due() == (0, 1)
    note = Notification.objects.get(alert=alert)
    assert note.status == Notification.PENDING and note.attempts == 1
    assert note.last_error  # apprise's own words
    assert note.next_attempt_at >= before + timedelta(seconds=delivery.BACKOFF_FIRST_S)
    first_retry = note.next_attempt_at

    assert delivery.deliver_due(now=first_retry - timedelta(seconds=1)) == (0, 0)  # not due

    before = timezone.now()
    assert delivery.deliver_due(now=first_retry) == (0, 1)  # still down: the wait doubles
    note.refresh_from_db()
    assert note.attempts == 2
    assert note.next_attempt_at >= before + timedelta(seconds=2 * delivery.BACKOFF_FIRST_S)

    receiver = Receiver(port)  # the endpoint comes back on the same port
    try:
        assert delivery.deliver_due(now=note.next_attempt_at) == (1, 0)
        note.refresh_from_db()
        assert note.status == Notification.SENT and note.attempts == 3
        assert note.last_error == "" and note.sent_at is not None
        assert len(receiver.messages) == 1 and "backlog" in receiver.messages[0]["title"]
        assert delivery.deliver_due(now=note.next_attempt_at + timedelta(days=1)) == (0, 0)
    finally:
        receiver.close()


def test_delivery_gives_up_after_max_attempts() -> None:
    channel = Channel.objects.create(name="hook", url=closed_url())
    _fire_backlog(channel)
    note = Notification.objects.get()
    for _ in range(delivery.MAX_ATTEMPTS):
        assert delivery.deliver_due(now=note.next_attempt_at) == (0, 1)
        note.refresh_from_db()
    assert note.status == Notification.FAILED and note.attempts == delivery.MAX_ATTEMPTS
    assert delivery.deliver_due(now=timezone.now() + timedelta(days=30)) == (0, 0)


def test_backoff_doubles_and_is_capped() -> None:
    waits = [delivery.backoff(n).total_seconds() for n in range(1, 10)]
    assert waits[:4] == [15, 30, 60, 120]
    assert max(waits) == delivery.BACKOFF_MAX_S
    assert waits == sorted(waits)


def test_a_claimed_row_is_not_sent_twice(receiver: Receiver) -> None:
    channel = Channel.objects.create(name="hook", url=receiver.url)
    _fire_backlog(channel)
    now = timezone.now()
    claimed = delivery.claim(now, 10)
    assert len(claimed) == 1
    assert delivery.deliver_due(now=now) == (0, 0)  # leased to the first claimer
    assert delivery.deliver_due(now=now + delivery.LEASE) == (1, 0)  # the lease expired
    assert len(receiver.messages) == 1
