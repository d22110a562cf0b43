"""The rule state machine with a fake clock (``evaluate(now=...)``): queue snapshots written
at the fake times (or a fake metric feed where a value must be fractional), notifications
delivered by ``alerts.delivery.deliver_due`` to a local HTTP receiver and counted there.

``test_alert_metrics.py`` evaluates the same rules on real data.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from alerts import metric_values, services
from alerts.models import Alert, Channel, Notification, Rule, RuleState, Transition
from jobs.models import Server
from monitoring import selectors
from tests.receiver import Receiver
from tests.support.alerting import channel_for, rule, state_of, tick
from tests.support.worlds import snap

T0 = timezone.now().replace(microsecond=0)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def server(db: None) -> Server:
    return Server.objects.create(name="fake")


def tick_at(t: float) -> services.TickResult:
    """One tick of the beat ``t`` seconds into the fake clock (no jobs: no rollups to
    refresh)."""
    return tick(at(t), refresh=False)


def test_for_seconds_pending_then_firing_only_after_the_delay(server: Server,
                                                              receiver: Receiver) -> None:
    r = rule("queue_depth", ">", 5, for_seconds=120)
    channel_for(receiver, r)
    for t in (0, 30, 60, 119):
        snap(server, "q", 10, at=at(t))
        assert tick_at(t).fired == []
        state = state_of(r, "q")
        assert state.state == RuleState.PENDING and state.since == at(0)
    assert not Alert.objects.exists() and receiver.messages == []
    snap(server, "q", 10, at=at(120))
    fired = tick_at(120).fired
    alert = Alert.objects.get()
    assert fired == [alert.id] and alert.started_at == at(120)
    assert state_of(r, "q").state == RuleState.FIRING
    assert len(receiver.messages) == 1


def test_pending_that_clears_starts_the_delay_again(server: Server) -> None:
    r = rule("queue_depth", ">", 5, for_seconds=60)
    snap(server, "q", 10, at=at(0))
    tick_at(0)
    snap(server, "q", 0, at=at(50))  # cleared before the delay ran out
    tick_at(50)
    assert state_of(r, "q").state == RuleState.OK
    snap(server, "q", 10, at=at(70))
    tick_at(70)
    snap(server, "q", 10, at=at(110))  # 110 s after the first breach, only 40 s in this one
    assert tick_at(110).fired == []
    snap(server, "q", 10, at=at(130))
    assert len(tick_at(130).fired) == 1


@pytest.fixture
def feed(monkeypatch: pytest.MonkeyPatch, server: Server) -> dict[str, float | None]:
    """A fake metric source for values a queue snapshot cannot hold (fractions): the
    evaluator reads ``queue_depth`` of function ``q`` from ``feed["v"]``."""
    current: dict[str, float | None] = {"v": None}

    def alert_metrics(windows: set[int], now: datetime | None = None) -> dict:
        return {(server.id, "q"): {"queue_depth": current["v"]}}

    monkeypatch.setattr(metric_values, "alert_metrics", alert_metrics)
    return current


def test_hysteresis_value_hovering_on_the_threshold_never_flaps(
        feed: dict[str, float | None], receiver: Receiver) -> None:
    r = rule("queue_depth", ">", 5)
    channel_for(receiver, r)
    feed["v"] = 7
    assert len(tick_at(0).fired) == 1
    assert len(receiver.messages) == 1
    for i in range(1, 21):
        feed["v"] = 4.99 if i % 2 else 5.01
        result = tick_at(i * 10)
        assert result.fired == [] and result.resolved == []
    alert = Alert.objects.get()
    assert alert.state == Alert.FIRING and alert.resolved_at is None
    assert state_of(r, "q").state == RuleState.FIRING
    assert len(receiver.messages) == 1
    assert Notification.objects.count() == 1

    feed["v"] = 0  # a clear recovery
    assert tick_at(300).resolved == [alert.id]
    for t in (310, 320, 330):
        result = tick_at(t)
        assert result.fired == [] and result.resolved == []
    alert.refresh_from_db()
    assert alert.state == Alert.RESOLVED and alert.resolved_at == at(300) and alert.value == 0
    assert len(receiver.messages) == 2 and "RESOLVED" in receiver.messages[1]["title"]
    assert Notification.objects.filter(kind="resolved").count() == 1


def test_hysteresis_with_snapshots_then_clear_recovery(server: Server,
                                                        receiver: Receiver) -> None:
    r = rule("queue_depth", ">", 100)  # margin 5 %: resolves at 95 or less
    channel_for(receiver, r)
    snap(server, "q", 150, at=at(0))
    assert len(tick_at(0).fired) == 1
    for i, depth in enumerate([99, 101, 96, 100, 99, 101] * 3, start=1):
        snap(server, "q", depth, at=at(i * 10))
        result = tick_at(i * 10)
        assert result.fired == [] and result.resolved == [], depth
    snap(server, "q", 0, at=at(500))
    assert len(tick_at(500).resolved) == 1
    snap(server, "q", 0, at=at(510))
    assert tick_at(510).resolved == []
    assert [m["title"].startswith("[RESOLVED]") for m in receiver.messages] == [False, True]


def test_disabled_rule_never_fires(server: Server, receiver: Receiver) -> None:
    off = rule("queue_depth", ">", 5, enabled=False)
    on = rule("queue_depth", ">", 5)
    channel_for(receiver, off)
    for t in (0, 10, 20):
        snap(server, "q", 50, at=at(t))
        tick_at(t)
    assert not RuleState.objects.filter(rule=off).exists()
    assert not Alert.objects.filter(rule=off).exists()
    assert Alert.objects.filter(rule=on).count() == 1  # the same data fires an enabled rule
    assert receiver.messages == []


def fired_then_disabled(server: Server, receiver: Receiver) -> None:
    """A rule on queue q that fired at 0 s and told ``receiver`` so, then was disabled."""
    r = rule("queue_depth", ">", 5)
    channel_for(receiver, r)
    snap(server, "q", 50, at=at(0))
    tick_at(0)
    Rule.objects.filter(pk=r.pk).update(enabled=False)


def test_disabling_a_firing_rule_sends_nothing_more(server: Server,
                                                     receiver: Receiver) -> None:
    fired_then_disabled(server, receiver)
    snap(server, "q", 0, at=at(10))
    snap(server, "q", 80, at=at(20))
    tick_at(10)
    tick_at(20)
    assert len(receiver.messages) == 1


def test_disabled_rule_is_not_repeated(server: Server, receiver: Receiver,
                                       settings) -> None:  # type: ignore[no-untyped-def]
    settings.HQ_ALERT_REPEAT_S = 600
    fired_then_disabled(server, receiver)
    for t in (600, 1200):
        snap(server, "q", 50, at=at(t))
        tick_at(t)
    assert len(receiver.messages) == 1


def test_glob_matches_only_its_functions(server: Server) -> None:
    r = rule("queue_depth", ">", 5, "resize_*")
    names = ["resize_small", "resize_large", "resize_", "resizer", "thumb_resize_x",
             "Resize_big", "xresize_a"]
    for name in names:
        snap(server, name, 10, at=at(0))
    result = tick_at(0)
    matched = {"resize_small", "resize_large", "resize_"}
    assert set(RuleState.objects.filter(rule=r).values_list("function", flat=True)) == matched
    assert set(Alert.objects.values_list("function", flat=True)) == matched
    assert len(result.fired) == 3


def test_rule_with_a_server_ignores_other_servers(server: Server) -> None:
    other = Server.objects.create(name="other")
    r = rule("queue_depth", ">", 5, server=server)
    snap(server, "resize_a", 10, at=at(0))
    snap(other, "resize_a", 50, at=at(0))
    snap(other, "resize_b", 50, at=at(0))
    assert len(tick_at(0).fired) == 1
    alert = Alert.objects.get()
    assert alert.server_id == server.id and alert.value == 10
    assert list(RuleState.objects.filter(rule=r).values_list("server_id", "function")) == [
        (server.id, "resize_a")]


def test_queue_that_disappears_resolves(server: Server, receiver: Receiver) -> None:
    """No fresh snapshot (the tap stopped polling): no data, so the alert resolves."""
    r = rule("queue_depth", ">", 5)
    channel_for(receiver, r)
    snap(server, "q", 50, at=at(0))
    tick_at(0)
    assert len(tick_at(60).fired) == 0  # the 0 s snapshot is still fresh
    result = tick_at(0 + selectors.FRESH.total_seconds() + 1)
    assert len(result.resolved) == 1
    assert len(receiver.messages) == 2


def test_unacknowledged_alert_is_repeated_acknowledged_is_not(
        server: Server, receiver: Receiver, settings) -> None:  # type: ignore[no-untyped-def]
    settings.HQ_ALERT_REPEAT_S = 600
    loud = rule("queue_depth", ">", 5, "loud")
    quiet = rule("queue_depth", ">", 5, "quiet")
    channel_for(receiver, loud, quiet)
    for fn in ("loud", "quiet"):
        snap(server, fn, 50, at=at(0))
    tick_at(0)
    assert len(receiver.messages) == 2
    services.acknowledge(alert_id=Alert.objects.get(rule=quiet).id, user=None)
    for t in (300, 600, 900, 1200):
        for fn in ("loud", "quiet"):
            snap(server, fn, 50, at=at(t))
        tick_at(t)
    titles = [m["title"] for m in receiver.messages]
    assert sum("loud" in t for t in titles) == 3  # fired at 0, repeated at 600 and 1200
    assert sum("quiet" in t for t in titles) == 1


def test_disabled_channel_gets_nothing(server: Server, receiver: Receiver) -> None:
    r = rule("queue_depth", ">", 5)
    ch = channel_for(receiver, r)
    Channel.objects.filter(pk=ch.pk).update(enabled=False)
    snap(server, "q", 50, at=at(0))
    assert len(tick_at(0).fired) == 1
    assert receiver.messages == [] and not Notification.objects.exists()


def test_stranded_above_zero_resolves_when_a_worker_takes_the_queue(server: Server) -> None:
    r = rule("stranded", ">", 0)
    snap(server, "q", 4, at=at(0))
    assert len(tick_at(0).fired) == 1
    snap(server, "q", 0, at=at(10), workers=1)
    assert state_of(r, "q").value == 4
    result = tick_at(10)
    assert len(result.resolved) == 1
    assert Alert.objects.get().state == Alert.RESOLVED


def test_transition_table_of_step_directly() -> None:
    """``RuleState.step`` alone, no database: ok → pending → firing → ok."""
    r = Rule(metric="queue_depth", operator=">=", threshold=10, for_seconds=30)
    s = RuleState(state=RuleState.OK, since=at(0), evaluated_at=at(0))
    assert s.step(r, 10, at(0)) == Transition() and s.state == RuleState.PENDING
    assert not s.step(r, 12, at(29)).fired and s.state == RuleState.PENDING
    assert s.step(r, 12, at(30)).fired and s.state == RuleState.FIRING
    assert not s.step(r, 9.6, at(40)).resolved  # within the 5 % band (0.5)
    assert s.step(r, None, at(50)).resolved and s.state == RuleState.OK
    below = Rule(metric="workers", operator="<", threshold=2)
    s = RuleState(state=RuleState.OK, since=at(0), evaluated_at=at(0))
    assert s.step(below, 1, at(0)).fired
    assert not s.step(below, 2.05, at(10)).resolved  # 2.05 < 2 + 0.1
    assert s.step(below, 3, at(20)).resolved
