"""Reads for alerts: what fires now, alert history, rules with their per-queue states,
channels with how their deliveries went. The pages and the API call these."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict

from django.db.models import Case, Count, IntegerField, OuterRef, Q, QuerySet, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from hq.errors import InvalidInput

from .metric_values import WINDOWED
from .models import Alert, Channel, Metric, Notification, Rule, RuleState

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

SEVERITY_RANK = Case(When(rule__severity="critical", then=Value(0)),
                     When(rule__severity="warning", then=Value(1)),
                     default=Value(2), output_field=IntegerField())
STATES = (Alert.FIRING, Alert.RESOLVED)


def alerts(*, state: str = "") -> QuerySet[Alert]:
    """Alert history, newest first; ``state`` (firing or resolved) narrows it."""
    qs = Alert.objects.select_related("rule", "server", "acknowledged_by")
    if state:
        if state not in STATES:
            raise InvalidInput("state must be firing or resolved",
                               fields={"state": ["firing or resolved"]})
        qs = qs.filter(state=state)
    return qs


def firing_alerts() -> QuerySet[Alert]:
    """Firing alerts, the worst first: critical before warning before info, then newest."""
    return (alerts(state=Alert.FIRING)
            .annotate(rank=SEVERITY_RANK).order_by("rank", "-started_at", "-id"))


def firing_queues() -> set[tuple[str, str]]:
    """(server name, function) of the queues an alert fires on now, for the overview's
    "needs attention" (server "*": a rule over every server; per-server alerts, on
    function "*", name no queue)."""
    rows = (Alert.objects.filter(state=Alert.FIRING).exclude(function="*")
            .values_list("server__name", "function").distinct())
    return {(server or "*", function) for server, function in rows}


def firing_count() -> int:
    return Alert.objects.filter(state=Alert.FIRING).count()


def resolved_since(since: datetime) -> int:
    return Alert.objects.filter(state=Alert.RESOLVED, resolved_at__gte=since).count()


def alert_with_rule(pk: int) -> Alert | None:
    return (Alert.objects.select_related("rule", "rule__server", "server", "acknowledged_by")
            .filter(pk=pk).first())


def notifications(alert: Alert) -> list[Notification]:
    return list(alert.notifications.select_related("channel").order_by("created_at", "id"))


def rules() -> QuerySet[Rule]:
    return Rule.objects.select_related("server").prefetch_related("channels")


def rule_rows(qs: QuerySet[Rule] | None = None) -> list[dict[str, Any]]:
    """Each rule with how many of its queues fire, are pending and are ok."""
    qs = rules() if qs is None else qs.select_related("server").prefetch_related("channels")
    counts: dict[int, dict[str, int]] = {}
    for rid, st, n in (RuleState.objects.filter(rule__in=qs).values_list("rule_id", "state")
                       .annotate(n=Count("id"))):
        counts.setdefault(rid, {})[st] = n
    rows = []
    for rule in qs:
        c = counts.get(rule.pk, {})
        rows.append({"rule": rule, "firing": c.get(RuleState.FIRING, 0),
                     "pending": c.get(RuleState.PENDING, 0), "ok": c.get(RuleState.OK, 0),
                     "metric_label": Metric(rule.metric).label,
                     "window_ms": rule.window_seconds * 1000 if rule.metric in WINDOWED else None,
                     "channels": list(rule.channels.all())})
    return rows


class ChannelDelivery(TypedDict):
    """What :func:`channels_with_delivery` annotates each channel with."""

    rule_count: int
    failing: int
    last_status: str | None
    last_attempts: int | None
    last_error: str | None
    last_at: datetime | None


def channels_with_delivery() -> QuerySet[WithAnnotations[Channel, ChannelDelivery]]:
    """Channels with how many rules use them, their latest message's outcome, and how
    many messages are failing (retrying, or given up on in the last 24 h)."""
    last = Notification.objects.filter(channel=OuterRef("pk")).order_by("-created_at", "-id")
    failing = (Notification.objects.filter(channel=OuterRef("pk"))
               .filter(Q(status=Notification.PENDING, attempts__gt=0)
                       | Q(status=Notification.FAILED,
                           created_at__gte=timezone.now() - timedelta(hours=24)))
               .order_by().values("channel").annotate(n=Count("id")).values("n"))
    return Channel.objects.annotate(
        rule_count=Count("rules"),
        failing=Coalesce(Subquery(failing), 0),
        last_status=Subquery(last.values("status")[:1]),
        last_attempts=Subquery(last.values("attempts")[:1]),
        last_error=Subquery(last.values("last_error")[:1]),
        last_at=Subquery(last.values("created_at")[:1]),
    ).order_by("name")
