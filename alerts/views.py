"""Web pages for alerts: what fires now, the rules, history, one alert, the channels.

Thin: reads from ``alerts.selectors``, shaping from ``alerts.presenters``, writes through
``alerts.services`` or the API's serializers (rules and channels, see ``alerts/forms.py``).
Everyone with the viewer role reads; operators change rules and acknowledge alerts; only
admins see and manage channels (they hold webhook tokens and passwords).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, cast

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from hq.errors import Conflict, NotFound
from hq.models import Role
from hq.roles import has_role
from hq.web import HtmxHttpRequest, or_404, render_page, role_required, viewer_required

from . import presenters, selectors, services
from .forms import ChannelForm, RuleForm
from .models import Channel, Metric, Rule
from .serializers import AckSerializer

if TYPE_CHECKING:
    from django.contrib.auth.models import User

HISTORY_LIMIT = 100
SILENCE_S = 3600

operator_required = role_required(Role.OPERATOR, "Only operators and admins may change "
                                                 "alert rules or acknowledge alerts.")
admin_required = role_required(Role.ADMIN, "Only admins may see and manage notification "
                                           "channels.")


# ---------------------------------------------------------------- /alerts/


@require_GET
@viewer_required
def alert_list(request: HtmxHttpRequest) -> HttpResponse:
    state = request.GET.get("state", "")
    state = state if state in selectors.STATES else ""
    firing = presenters.shape_alerts(selectors.firing_alerts())
    history = presenters.shape_alerts(selectors.alerts(state=state)[: HISTORY_LIMIT + 1])
    rules = selectors.rule_rows()
    context = {
        "firing": firing, "rules": rules, "history": history[:HISTORY_LIMIT],
        "history_more": len(history) > HISTORY_LIMIT, "state": state,
        "totals": {
            "firing": len(firing), "unacked": sum(a.acknowledged_at is None for a in firing),
            "pending": sum(r["pending"] for r in rules),
            "rules": len(rules), "enabled": sum(r["rule"].enabled for r in rules),
            "resolved_24h": selectors.resolved_since(timezone.now() - timedelta(hours=24)),
        },
        "can_admin": has_role(request.user, Role.ADMIN),
        "silence_s": SILENCE_S,
    }
    return render_page(request, "alerts/list.html", "alerts/_list.html", context)


@require_POST
@operator_required
def alert_ack(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Acknowledge (and optionally silence); htmx gets the alert's row back."""
    body = AckSerializer(data={"silence_seconds": request.POST.get("silence_seconds") or 0})
    silence = body.validated_data["silence_seconds"] if body.is_valid() else 0
    note = ""
    user = cast("User", request.user)  # operator_required let only operators in
    try:
        services.acknowledge(alert_id=pk, user=user, silence_s=silence)
    except NotFound as exc:
        raise Http404(exc.message) from None
    except Conflict as exc:
        note = exc.message
    alert = get_object_or_404(selectors.alerts(), pk=pk)
    if request.htmx:
        context = {"a": presenters.shape_alert(alert, timezone.now()), "can_operate": True,
                   "note": note, "silence_s": SILENCE_S}
        return render(request, "alerts/_firing_row.html", context)
    if note:
        messages.warning(request, note)
    return redirect(_next(request, reverse("alert-detail", args=[pk])))


def _next(request: HttpRequest, default: str) -> str:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()},
                                                  require_https=request.is_secure()):
        return target
    return default


@require_GET
@viewer_required
def header_strip(request: HtmxHttpRequest) -> HttpResponse:
    """The strip under the top bar and (out of band) the count on the Alerts link."""
    context = {"alerts_header": presenters.FiringAlerts(request), "refresh": True}
    return render_page(request, "alerts/_header_strip_items.html",
                       "alerts/_header_strip_items.html", context)


# ---------------------------------------------------------------- one alert


@require_GET
@viewer_required
def alert_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    alert = selectors.alert_with_rule(pk)
    if alert is None:
        raise Http404(f"No alert with id {pk}.")
    presenters.shape_alert(alert, timezone.now())
    notes = [presenters.shape_notification(n) for n in selectors.notifications(alert)]
    queues = [presenters.snapshot_queue(q, alert) for q in alert.snapshot.get("queues", [])]
    workers = [presenters.snapshot_worker(w, alert.started_at)
               for w in alert.snapshot.get("workers", [])]
    context = {
        "alert": alert, "rule": alert.rule, "notifications": notes,
        "metric_label": Metric(alert.rule.metric).label,
        "channels": list(alert.rule.channels.all()),
        "snap_queues": queues, "snap_workers": workers,
        "many_servers": len({q["server"] for q in queues} | {w["server"] for w in workers}) > 1,
        "silence_s": SILENCE_S,
    }
    return render_page(request, "alerts/detail.html", "alerts/_detail.html", context)


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
    rule = get_object_or_404(selectors.rules(), pk=pk)
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
    name = or_404(services.delete, Rule, pk=pk)
    messages.success(request, f"Rule “{name}” deleted, with its alerts.")
    return redirect("alert-list")


@require_POST
@operator_required
def rule_toggle(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    # the button says what it wants ("1" or "0"), so a double click does not flip it back
    wanted = request.POST.get("enabled")
    or_404(services.set_enabled, Rule, pk=pk,
           enabled=(wanted == "1") if wanted in ("0", "1") else None)
    if request.htmx:
        row = selectors.rule_rows(Rule.objects.filter(pk=pk))[0]
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
    channels = [presenters.shape_channel(c) for c in selectors.channels_with_delivery()]
    context = {"form": form, "channels": channels}
    return render(request, "alerts/channels.html", context,
                  status=400 if form.is_bound and form.errors else 200)


@require_POST
@admin_required
def channel_toggle(request: HttpRequest, pk: int) -> HttpResponse:
    channel = or_404(services.set_enabled, Channel, pk=pk, enabled=None)
    state = "enabled" if channel.enabled else "disabled: rules no longer notify it"
    messages.success(request, f"Channel “{channel.name}” {state}.")
    return redirect(f"{reverse('channel-list')}#channel-{pk}")


@require_POST
@admin_required
def channel_delete(request: HttpRequest, pk: int) -> HttpResponse:
    name = or_404(services.delete, Channel, pk=pk)
    messages.success(request, f"Channel “{name}” deleted.")
    return redirect("channel-list")


@require_POST
@admin_required
def channel_test(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Send a test message now and say what happened (apprise's own words on failure).
    The same steps as ``POST /api/v1/channels/{id}/test/``."""
    channel = get_object_or_404(Channel, pk=pk)
    _note, result = services.test_channel(channel=channel)
    error = presenters.clean_error(result.error)
    context = {"channel": channel, "result": result, "error": error, "at": timezone.now()}
    if request.htmx:
        return render(request, "alerts/_channel_test.html", context)
    if result.ok:
        messages.success(request, f"Test message sent to “{channel.name}”.")
    else:
        messages.error(request, f"Test to “{channel.name}” failed: {error}")
    return redirect(f"{reverse('channel-list')}#channel-{pk}")
