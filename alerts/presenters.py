"""Alerts as people read them: values in each metric's unit, apprise's errors without
log noise, channel URLs with their secrets hidden, the header's strip of firing alerts,
and the queue and worker rows an alert stored when it fired."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeAlias, TypedDict, cast
from urllib.parse import unquote

import apprise
from django.http import HttpRequest
from django.utils import timezone

from hq.formatting import duration_ms
from hq.models import Role
from hq.roles import has_role
from hq.web import poll_seconds
from monitoring.presenters import queue_row, worker_row

from . import selectors
from .metric_values import NEVER_S
from .models import Alert, Channel, Metric, Notification
from .selectors import ChannelDelivery

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations


class AlertTexts(TypedDict):
    """What :func:`shape_alert` attaches to an alert for the templates."""

    value_text: str
    peak_text: str
    threshold_text: str
    age_ms: float
    silenced: bool


class ChannelTexts(ChannelDelivery):
    """What :func:`shape_channel` attaches to a channel from ``channels_with_delivery``."""

    shown_url: str
    error_text: str


class NotificationTexts(TypedDict):
    error_text: str


if TYPE_CHECKING:
    ShownAlert: TypeAlias = WithAnnotations[Alert, AlertTexts]
    ShownChannel: TypeAlias = WithAnnotations[Channel, ChannelTexts]
    ShownNotification: TypeAlias = WithAnnotations[Notification, NotificationTexts]

STRIP_ROWS = 5
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:,.]+ - [A-Z]+ - ")


def metric_text(metric: str, value: float | None) -> str:
    """A metric's value in its own unit: 1,204 · 4 min 3 s · 12 % · 558 ms · never."""
    if value is None:
        return "—"
    if metric == Metric.FAILURE_RATE:
        pct = value * 100
        return f"{pct:.0f} %" if pct >= 10 or pct == int(pct) else f"{pct:.1f} %"
    if metric in (Metric.RUNTIME_P95, Metric.TIME_TO_COMPLETE_P95):
        return duration_ms(value)
    if metric in (Metric.OLDEST_QUEUED_AGE, Metric.RUNNING_TOO_LONG, Metric.DRAIN_TIME,
                  Metric.SERVER_DOWN):
        if metric == Metric.DRAIN_TIME and value >= NEVER_S:
            return "never"
        return "0 s" if value == 0 else duration_ms(value * 1000)
    return f"{value:,.0f}" if value == int(value) else f"{value:,.2f}".rstrip("0")


def clean_error(text: str | None) -> str:
    """apprise's error as a person reads it: without the log line's date and level."""
    return _LOG_PREFIX.sub("", text or "").strip()


def masked_url(url: str) -> str:
    """The URL with its secrets hidden, as apprise prints it (``slack://T...A/…``)."""
    plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    if not plugin:
        return url.split("://", 1)[0] + "://…"
    return unquote(plugin.url(privacy=True).split("?", 1)[0])


def shape_alert(alert: Alert, now: datetime) -> ShownAlert:
    """Attach what the templates show: values in the metric's unit, how long, silenced."""
    rule = alert.rule
    shown = cast("ShownAlert", alert)  # the same object, with the attributes set below
    shown.value_text = metric_text(rule.metric, alert.value)
    shown.peak_text = metric_text(rule.metric, alert.peak)
    shown.threshold_text = metric_text(rule.metric, rule.threshold)
    end = alert.resolved_at or now
    shown.age_ms = (end - alert.started_at).total_seconds() * 1000
    shown.silenced = bool(alert.silenced_until and alert.silenced_until > now)
    return shown


def shape_alerts(alerts: Iterable[Alert]) -> list[ShownAlert]:
    now = timezone.now()
    return [shape_alert(a, now) for a in alerts]


def shape_channel(channel: WithAnnotations[Channel, ChannelDelivery]) -> ShownChannel:
    """A channel from ``selectors.channels_with_delivery`` with its URL masked and its
    latest error readable."""
    shown = cast("ShownChannel", channel)
    shown.shown_url = masked_url(channel.url)
    shown.error_text = clean_error(channel.last_error)
    return shown


def shape_notification(note: Notification) -> ShownNotification:
    shown = cast("ShownNotification", note)
    shown.error_text = clean_error(note.last_error)
    return shown


class FiringAlerts:
    """The header's view of firing alerts (``alerts.context_processors``): lazy, so pages
    that never show it never query; then one COUNT, and up to :data:`STRIP_ROWS` rows
    only when something fires. Users without the viewer role see nothing."""

    def __init__(self, request: HttpRequest) -> None:
        self._request = request

    @cached_property
    def visible(self) -> bool:
        return has_role(getattr(self._request, "user", None), Role.VIEWER)

    @cached_property
    def count(self) -> int:
        return selectors.firing_count() if self.visible else 0

    @cached_property
    def rows(self) -> list[ShownAlert]:
        if not self.count:
            return []
        return shape_alerts(selectors.firing_alerts()[:STRIP_ROWS])

    @property
    def more(self) -> int:
        return max(self.count - len(self.rows), 0)

    @cached_property
    def poll(self) -> int:
        return poll_seconds(self._request)


def snapshot_queue(row: dict[str, Any], alert: Alert) -> dict[str, Any]:
    """A queue row as stored at fire time, shaped like the overview's rows."""
    shaped = queue_row({"sparkline": [], **row})
    server = alert.server.name if alert.server else None
    shaped["is_alert"] = row.get("function") == alert.function and (
        server is None or row.get("server") == server)
    return shaped


def snapshot_worker(row: dict[str, Any], fired_at: datetime) -> dict[str, Any]:
    """A worker row as stored at fire time (times were stored as ISO text)."""
    w = dict(row)
    for key in ("connected_at", "last_seen"):
        value = w.get(key)
        w[key] = datetime.fromisoformat(value) if isinstance(value, str) else value
    w.setdefault("current_job", None)
    w.setdefault("functions", [])
    shaped = worker_row(w)
    connected = w.get("connected_at")
    ms = (fired_at - connected).total_seconds() * 1000 if connected else None
    shaped["connected_for_ms"] = ms if ms is not None and ms >= 0 else None
    return shaped
