"""Alert rules as tests make them, and one tick of the Celery beat: evaluate, then deliver."""

from __future__ import annotations

from datetime import datetime

from alerts import delivery, services
from alerts.models import Channel, Rule, RuleState
from tests.receiver import Receiver


def rule(metric: str, operator: str, threshold: float, function: str = "*",
         **extra: object) -> Rule:
    """A rule named after what it says (``queue_depth > 5``), firing at once unless
    ``for_seconds`` is given."""
    for_seconds = extra.pop("for_seconds", 0)
    return Rule.objects.create(name=f"{metric} {operator} {threshold:g}", metric=metric,
                               function=function, operator=operator, threshold=threshold,
                               for_seconds=for_seconds, **extra)


def channel_for(receiver: Receiver, *rules: Rule) -> Channel:
    """A channel to ``receiver`` that ``rules`` notify."""
    ch = Channel.objects.create(name=f"hook-{receiver.port}", url=receiver.url)
    for r in rules:
        r.channels.add(ch)
    return ch


def state_of(r: Rule, function: str) -> RuleState:
    return RuleState.objects.get(rule=r, function=function)


def tick(now: datetime | None = None, *, refresh: bool = True) -> services.TickResult:
    """One evaluation followed by one delivery round, as the Celery beat runs them (at
    ``now``, or now; ``refresh`` folds recent jobs into rollups first)."""
    result = services.evaluate(now=now, refresh=refresh)
    delivery.deliver_due(now=now)
    return result
