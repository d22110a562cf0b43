"""The issue's headline scenario on the real stack: a queue backs up, HQ fires and tells a
(local) notification endpoint; a worker drains it, HQ resolves and tells it again."""

from __future__ import annotations

import pytest

from alerts.metric_values import alert_metrics
from alerts.models import Alert, Channel, Notification, Rule
from tests.receiver import Receiver
from tests.support.alerting import tick
from tests.support.gearman_cli import start_worker, stop_worker, submit_bg
from tests.support.stack import Tap, wait_for

pytestmark = pytest.mark.gearmand


def depth(function: str) -> float | None:
    """The queue depth the evaluator sees for ``function`` now."""
    for (_sid, fn), metrics in alert_metrics(set()).items():
        if fn == function:
            return metrics.get("queue_depth")
    return None


def test_queue_backs_up_fires_then_resolves(tap: Tap, receiver: Receiver) -> None:
    channel = Channel.objects.create(name="ops", url=receiver.url)
    rule = Rule.objects.create(name="backlog", metric="queue_depth", function="thumb*",
                               operator=">", threshold=5, for_seconds=0)
    rule.channels.add(channel)
    for i in range(20):
        submit_bg(tap.port, "thumbnail", f"img {i}")
    # the poller reports the depth within a second or two; two ticks are enough after that
    wait_for(lambda: depth("thumbnail") == 20, message="depth 20")
    fired = tick().fired or tick().fired
    assert len(fired) == 1
    alert = Alert.objects.get(pk=fired[0])
    assert alert.state == "firing" and alert.value == 20 and alert.function == "thumbnail"
    assert any(q["function"] == "thumbnail" for q in alert.snapshot["queues"])
    assert len(receiver.messages) == 1
    assert "backlog" in receiver.messages[0]["title"]
    tick()  # still firing: nothing new is sent
    assert len(receiver.messages) == 1

    worker = start_worker(tap.port, "thumbnail", "cat")
    try:
        wait_for(lambda: depth("thumbnail") == 0, message="drained")
        resolved = tick().resolved
    finally:
        stop_worker(worker)
    assert resolved == [alert.id]
    alert.refresh_from_db()
    assert alert.state == "resolved" and alert.resolved_at is not None
    assert len(receiver.messages) == 2
    assert "RESOLVED" in receiver.messages[1]["title"]
    assert Notification.objects.filter(alert=alert, status="sent").count() == 2
