"""Web pages for alerts: what fires now, the rules, history, one alert, the channels.

Views stay thin. Writes go through ``alerts.services`` (ack, test message) or the API's
serializers (rules, channels; see ``alerts/forms.py``); this module reads, shapes rows for
the templates (values in the metric's unit, durations) and picks the page or its htmx
fragment. Everyone with the viewer role reads; operators change rules and acknowledge
alerts; only admins see and manage channels (they hold webhook tokens and passwords).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cached_property, wraps
from typing import Any
from urllib.parse import unquote

import apprise
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Case, Count, IntegerField, OuterRef, Q, QuerySet, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from hq.errors import Conflict, NotFound
from hq.models import Role
from hq.roles import has_role
from jobs.templatetags.hq_format import duration_ms
from jobs.views import viewer_required
from monitoring.selectors import NEVER_S, WINDOWED
from monitoring.views import _queue_row, _worker_row

from . import services
from .forms import ChannelForm, RuleForm
from .models import Alert, Channel, Metric, Notification, Rule, RuleState
from .serializers import AckSerializer

View = Callable[..., HttpResponse]

#: seconds between fallback refreshes of live parts; ``?poll=N`` picks another
POLL_DEFAULT = 15
POLL_MIN, POLL_MAX = 1, 300
HISTORY_LIMIT = 100
STRIP_ROWS = 5
SILENCE_S = 3600
SEVERITY_RANK = Case(When(rule__severity="critical", then=Value(0)),
                     When(rule__severity="warning", then=Value(1)),
                     default=Value(2), output_field=IntegerField())


def _needs(role: Role, message: str) -> Callable[[View], View]:
    """Like ``viewer_required`` (sign in first), and then at least ``role`` (else 403)."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
            if not has_role(request.user, role):
                raise PermissionDenied(message)
            return view(request, *args, **kwargs)

        return viewer_required(wrapped)

    return decorate


operator_required = _needs(Role.OPERATOR, "Only operators and admins may change alert "
                                          "rules or acknowledge alerts.")
admin_required = _needs(Role.ADMIN, "Only admins may see and manage notification channels.")


def poll_seconds(request: HttpRequest) -> int:
    raw = request.GET.get("poll", "")
    return min(max(int(raw), POLL_MIN), POLL_MAX) if raw.isdigit() else POLL_DEFAULT


def _render(request: HttpRequest, page: str, fragment: str, context: dict[str, Any],
            status: int = 200) -> HttpResponse:
    """The whole page, or only its live fragment for htmx (not for a history restore)."""
    htmx = request.htmx  # type: ignore[attr-defined]
    partial = bool(htmx) and not htmx.history_restore_request
    context.setdefault("poll", poll_seconds(request))
    context.setdefault("can_operate", has_role(request.user, Role.OPERATOR))
    response = render(request, fragment if partial else page, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


# ---------------------------------------------------------------- formatting


def metric_text(metric: str, value: float | None) -> str:
    """A metric's value in its own unit: 1,204 · 4 min 3 s · 12 % · 558 ms · never."""
    if value is None:
        return "—"
    if metric == Metric.FAILURE_RATE:
        pct = value * 100
        return f"{pct:.0f} %" if pct >= 10 or pct == int(pct) else f"{pct:.1f} %"
    if metric == Metric.RUNTIME_P95:
        return duration_ms(value)
    if metric in (Metric.OLDEST_QUEUED_AGE, Metric.RUNNING_TOO_LONG, Metric.DRAIN_TIME):
        if metric == Metric.DRAIN_TIME and value >= NEVER_S:
            return "never"
        return "0 s" if value == 0 else duration_ms(value * 1000)
    return f"{value:,.0f}" if value == int(value) else f"{value:,.2f}".rstrip("0")


_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:,.]+ - [A-Z]+ - ")


def clean_error(text: str | None) -> str:
    """apprise's error as a person reads it: without the log line's date and level."""
    return _LOG_PREFIX.sub("", text or "").strip()


def shape_alert(alert: Alert, now: datetime) -> Alert:
    """Attach what the templates show: values in the metric's unit, how long, silenced."""
    rule = alert.rule
    alert.value_text = metric_text(rule.metric, alert.value)  # type: ignore[attr-defined]
    alert.peak_text = metric_text(rule.metric, alert.peak)  # type: ignore[attr-defined]
    alert.threshold_text = metric_text(rule.metric, rule.threshold)  # type: ignore[attr-defined]
    end = alert.resolved_at or now
    alert.age_ms = (end - alert.started_at).total_seconds() * 1000  # type: ignore[attr-defined]
    alert.silenced = bool(alert.silenced_until and alert.silenced_until > now)  # type: ignore[attr-defined]
    return alert


def firing_alerts() -> QuerySet[Alert]:
    """Firing alerts, the worst first: critical before warning before info, then newest."""
    return (Alert.objects.filter(state=Alert.FIRING)
            .select_related("rule", "server", "acknowledged_by")
            .annotate(rank=SEVERITY_RANK).order_by("rank", "-started_at", "-id"))


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
        return Alert.objects.filter(state=Alert.FIRING).count() if self.visible else 0

    @cached_property
    def rows(self) -> list[Alert]:
        if not self.count:
            return []
        now = timezone.now()
        return [shape_alert(a, now) for a in firing_alerts()[:STRIP_ROWS]]

    @property
    def more(self) -> int:
        return max(self.count - len(self.rows), 0)

    @cached_property
    def poll(self) -> int:
        return poll_seconds(self._request)


# ---------------------------------------------------------------- /alerts/


@require_GET
@viewer_required
def alert_list(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    state = request.GET.get("state", "")
    state = state if state in (Alert.FIRING, Alert.RESOLVED) else ""
    firing = [shape_alert(a, now) for a in firing_alerts()]
    history_qs = Alert.objects.select_related("rule", "server", "acknowledged_by")
    if state:
        history_qs = history_qs.filter(state=state)
    history = [shape_alert(a, now) for a in history_qs[: HISTORY_LIMIT + 1]]
    rules = _rule_rows(Rule.objects.all())
    context = {
        "firing": firing, "rules": rules, "history": history[:HISTORY_LIMIT],
        "history_more": len(history) > HISTORY_LIMIT, "state": state,
        "totals": {
            "firing": len(firing), "unacked": sum(a.acknowledged_at is None for a in firing),
            "pending": sum(r["pending"] for r in rules),
            "rules": len(rules), "enabled": sum(r["rule"].enabled for r in rules),
            "resolved_24h": Alert.objects.filter(
                state=Alert.RESOLVED, resolved_at__gte=now - timedelta(hours=24)).count(),
        },
        "can_admin": has_role(request.user, Role.ADMIN),
        "silence_s": SILENCE_S,
    }
    return _render(request, "alerts/list.html", "alerts/_list.html", context)


def _rule_rows(rules: QuerySet[Rule]) -> list[dict[str, Any]]:
    rules = rules.select_related("server").prefetch_related("channels")
    counts: dict[int, dict[str, int]] = {}
    for rid, st, n in (RuleState.objects.filter(rule__in=rules).values_list("rule_id", "state")
                       .annotate(n=Count("id"))):
        counts.setdefault(rid, {})[st] = n
    rows = []
    for rule in rules:
        c = counts.get(rule.pk, {})
        rows.append({"rule": rule, "firing": c.get(RuleState.FIRING, 0),
                     "pending": c.get(RuleState.PENDING, 0), "ok": c.get(RuleState.OK, 0),
                     "metric_label": Metric(rule.metric).label,
                     "window_ms": rule.window_seconds * 1000 if rule.metric in WINDOWED else None,
                     "channels": list(rule.channels.all())})
    return rows


@require_POST
@operator_required
def alert_ack(request: HttpRequest, pk: int) -> HttpResponse:
    """Acknowledge (and optionally silence); htmx gets the alert's row back."""
    body = AckSerializer(data={"silence_seconds": request.POST.get("silence_seconds") or 0})
    silence = body.validated_data["silence_seconds"] if body.is_valid() else 0
    note = ""
    try:
        services.acknowledge(pk, request.user, silence)
    except NotFound as exc:
        raise Http404(exc.message) from None
    except Conflict as exc:
        note = exc.message
    alert = shape_alert(get_object_or_404(
        Alert.objects.select_related("rule", "server", "acknowledged_by"), pk=pk),
        timezone.now())
    if request.htmx:  # type: ignore[attr-defined]
        return render(request, "alerts/_firing_row.html",
                      {"a": alert, "can_operate": True, "note": note, "silence_s": SILENCE_S})
    if note:
        messages.warning(request, note)
    return redirect(_next(request, reverse("alert-detail", args=[pk])))


def _next(request: HttpRequest, default: str) -> str:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()},
                                                  require_https=request.is_secure()):
        return target
    return default


# ---------------------------------------------------------------- the header strip


@require_GET
@viewer_required
def header_strip(request: HttpRequest) -> HttpResponse:
    """The strip under the top bar and (out of band) the count on the Alerts link."""
    context = {"alerts_header": FiringAlerts(request), "refresh": True}
    response = render(request, "alerts/_header_strip_items.html", context)
    patch_vary_headers(response, ["HX-Request"])
    return response


# ---------------------------------------------------------------- one alert


@require_GET
@viewer_required
def alert_detail(request: HttpRequest, pk: int) -> HttpResponse:
    alert = get_object_or_404(
        Alert.objects.select_related("rule", "rule__server", "server", "acknowledged_by"),
        pk=pk)
    shape_alert(alert, timezone.now())
    notes = list(alert.notifications.select_related("channel").order_by("created_at", "id"))
    for n in notes:
        n.error_text = clean_error(n.last_error)  # type: ignore[attr-defined]
    fired_at = alert.started_at
    queues = [_snapshot_queue(q, alert) for q in alert.snapshot.get("queues", [])]
    workers = [_snapshot_worker(w, fired_at) for w in alert.snapshot.get("workers", [])]
    context = {
        "alert": alert, "rule": alert.rule, "notifications": notes,
        "metric_label": Metric(alert.rule.metric).label,
        "channels": list(alert.rule.channels.all()),
        "snap_queues": queues, "snap_workers": workers,
        "many_servers": len({q["server"] for q in queues} | {w["server"] for w in workers}) > 1,
        "silence_s": SILENCE_S,
    }
    return _render(request, "alerts/detail.html", "alerts/_detail.html", context)


def _snapshot_queue(row: dict[str, Any], alert: Alert) -> dict[str, Any]:
    """A queue row as stored at fire time, shaped like the overview's rows."""
    shaped = _queue_row({"sparkline": [], **row})
    server = alert.server.name if alert.server else None
    shaped["is_alert"] = row.get("function") == alert.function and (
        server is None or row.get("server") == server)
    return shaped


def _snapshot_worker(row: dict[str, Any], fired_at: datetime) -> dict[str, Any]:
    """A worker row as stored at fire time (times were stored as ISO text)."""
    w = dict(row)
    for key in ("connected_at", "last_seen"):
        value = w.get(key)
        w[key] = datetime.fromisoformat(value) if isinstance(value, str) else value
    w.setdefault("current_job", None)
    w.setdefault("functions", [])
    shaped = _worker_row(w)
    connected = w.get("connected_at")
    ms = (fired_at - connected).total_seconds() * 1000 if connected else None
    shaped["connected_for_ms"] = ms if ms is not None and ms >= 0 else None
    return shaped


# ---------------------------------------------------------------- rules


@require_http_methods(["GET", "POST"])
@operator_required
def rule_new(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = RuleForm(request.POST)
        if form.is_valid():
            rule = form.save()
            messages.success(request, f"Rule “{rule.name}” created: {rule.describe()}.")
            return redirect(f"{reverse('alert-list')}#rule-{rule.pk}")
    else:
        form = RuleForm(initial=RuleForm.initial_from(request.GET))
    return _rule_form(request, form, None)


@require_http_methods(["GET", "POST"])
@operator_required
def rule_edit(request: HttpRequest, pk: int) -> HttpResponse:
    rule = get_object_or_404(Rule.objects.select_related("server"), pk=pk)
    if request.method == "POST":
        form = RuleForm(request.POST, instance=rule)
        if form.is_valid():
            rule = form.save()
            messages.success(request, f"Rule “{rule.name}” saved: {rule.describe()}.")
            return redirect(f"{reverse('alert-list')}#rule-{rule.pk}")
    else:
        form = RuleForm(instance=rule)
    return _rule_form(request, form, rule)


def _rule_form(request: HttpRequest, form: RuleForm, rule: Rule | None) -> HttpResponse:
    context = {"form": form, "rule": rule,
               "alert_count": rule.alerts.count() if rule else 0,
               "can_admin": has_role(request.user, Role.ADMIN)}
    return render(request, "alerts/rule_form.html", context,
                  status=400 if form.is_bound and form.errors else 200)


@require_POST
@operator_required
def rule_delete(request: HttpRequest, pk: int) -> HttpResponse:
    rule = get_object_or_404(Rule, pk=pk)
    name = rule.name
    rule.delete()
    messages.success(request, f"Rule “{name}” deleted, with its alerts.")
    return redirect("alert-list")


@require_POST
@operator_required
def rule_toggle(request: HttpRequest, pk: int) -> HttpResponse:
    rule = get_object_or_404(Rule, pk=pk)
    # the button says what it wants ("1" or "0"), so a double click does not flip it back
    wanted = request.POST.get("enabled")
    rule.enabled = (wanted == "1") if wanted in ("0", "1") else not rule.enabled
    rule.save(update_fields=["enabled"])
    if request.htmx:  # type: ignore[attr-defined]
        row = _rule_rows(Rule.objects.filter(pk=pk))[0]
        return render(request, "alerts/_rule_row.html", {"r": row, "can_operate": True})
    return redirect(f"{reverse('alert-list')}#rule-{pk}")


# ---------------------------------------------------------------- channels


@require_http_methods(["GET", "POST"])
@admin_required
def channel_list(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = ChannelForm(request.POST)
        if form.is_valid():
            channel = form.save()
            messages.success(request, f"Channel “{channel.name}” added. Send it a test.")
            return redirect(f"{reverse('channel-list')}#channel-{channel.pk}")
    else:
        form = ChannelForm()
    channels = list(_channels_with_delivery())
    for c in channels:
        c.shown_url = masked_url(c.url)  # type: ignore[attr-defined]
        c.error_text = clean_error(c.last_error)  # type: ignore[attr-defined]
    context = {"form": form, "channels": channels}
    return render(request, "alerts/channels.html", context,
                  status=400 if form.is_bound and form.errors else 200)


def _channels_with_delivery() -> QuerySet[Channel]:
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


def masked_url(url: str) -> str:
    """The URL with its secrets hidden, as apprise prints it (``slack://T...A/…``)."""
    plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    if not plugin:
        return url.split("://", 1)[0] + "://…"
    return unquote(plugin.url(privacy=True).split("?", 1)[0])


@require_POST
@admin_required
def channel_toggle(request: HttpRequest, pk: int) -> HttpResponse:
    channel = get_object_or_404(Channel, pk=pk)
    channel.enabled = not channel.enabled
    channel.save(update_fields=["enabled"])
    state = "enabled" if channel.enabled else "disabled: rules no longer notify it"
    messages.success(request, f"Channel “{channel.name}” {state}.")
    return redirect(f"{reverse('channel-list')}#channel-{pk}")


@require_POST
@admin_required
def channel_delete(request: HttpRequest, pk: int) -> HttpResponse:
    channel = get_object_or_404(Channel, pk=pk)
    name = channel.name
    channel.delete()
    messages.success(request, f"Channel “{name}” deleted.")
    return redirect("channel-list")


@require_POST
@admin_required
def channel_test(request: HttpRequest, pk: int) -> HttpResponse:
    """Send a test message now and say what happened (apprise's own words on failure).
    The same steps as ``POST /api/v1/channels/{id}/test/``."""
    channel = get_object_or_404(Channel, pk=pk)
    _note, result = services.test_channel(channel)
    error = clean_error(result.error)
    context = {"channel": channel, "result": result, "error": error, "at": timezone.now()}
    if request.htmx:  # type: ignore[attr-defined]
        return render(request, "alerts/_channel_test.html", context)
    if result.ok:
        messages.success(request, f"Test message sent to “{channel.name}”.")
    else:
        messages.error(request, f"Test to “{channel.name}” failed: {error}")
    return redirect(f"{reverse('channel-list')}#channel-{pk}")
