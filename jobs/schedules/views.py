"""The Schedules page: the list, the form (its next 5 runs shown as you type, through an
htmx partial), one schedule with its last runs, and delete. Viewers read; operators
write."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from hq.errors import HQError
from hq.models import Role
from hq.roles import has_role
from hq.web import form_errors, or_404, role_required, viewer_required

from ..models import Schedule, ScheduleRun
from ..selectors import known_functions
from . import services
from .forms import ScheduleForm, zone_choices

OPERATORS_ONLY = "Only operators and admins may change schedules."
LAST_RUNS = 20


def _context(request: HttpRequest, form: ScheduleForm, **more: Any) -> dict[str, Any]:
    return {"form": form, "functions": known_functions(), "zones": zone_choices(),
            "can_operate": has_role(request.user, Role.OPERATOR), **more}


def _save(request: HttpRequest, form: ScheduleForm,
          schedule: Schedule | None) -> HttpResponse | None:
    """On a POST, an operator's valid form saved: the redirect to the schedule. None when
    there is nothing to save or the form shows why not."""
    if request.method != "POST":
        return None
    if not has_role(request.user, Role.OPERATOR):
        raise PermissionDenied(OPERATORS_ONLY)
    if not form.is_valid():
        return None
    data = dict(form.cleaned_data)
    try:
        if schedule is None:
            schedule = services.create(data=data, user=request.user, via="ui")
            messages.success(request, f"Schedule “{schedule.name}” created.")
        else:
            schedule = services.update(schedule_id=schedule.pk, data=data, user=request.user,
                                       via="ui")
            messages.success(request, f"Schedule “{schedule.name}” saved.")
    except HQError as exc:
        form_errors(form, exc)
        return None
    return redirect("schedule-detail", pk=schedule.pk)


@viewer_required
def schedule_list(request: HttpRequest) -> HttpResponse:
    form = ScheduleForm(request.POST or None)
    done = _save(request, form, None)
    if done is not None:
        return done
    schedules = list(Schedule.objects.order_by("name"))
    status = 400 if form.errors else 200
    return render(request, "jobs/schedules.html",
                  _context(request, form, schedules=schedules), status=status)


@viewer_required
def schedule_detail(request: HttpRequest, pk: int) -> HttpResponse:
    schedule = Schedule.objects.filter(pk=pk).first()
    if schedule is None:
        raise Http404(f"No schedule with id {pk}.")
    initial = {"name": schedule.name, "function": schedule.function, "cron": schedule.cron,
               "timezone": schedule.timezone, "unique": schedule.unique,
               "priority": schedule.priority, "overlap": schedule.overlap,
               "enabled": schedule.enabled,
               "payload": schedule.payload_text if schedule.payload_text is not None else ""}
    form = ScheduleForm(request.POST or None, initial=initial)
    done = _save(request, form, schedule)
    if done is not None:
        return done
    runs = list(ScheduleRun.objects.filter(schedule=schedule).order_by("-tick")[:LAST_RUNS])
    status = 400 if form.errors else 200
    return render(request, "jobs/schedule_detail.html",
                  _context(request, form, schedule=schedule, runs=runs), status=status)


@require_POST
@role_required(Role.OPERATOR, OPERATORS_ONLY)
def schedule_delete(request: HttpRequest, pk: int) -> HttpResponse:
    or_404(services.delete, schedule_id=pk, user=request.user, via="ui")
    messages.success(request, "Schedule deleted.")
    return redirect("schedule-list")


@require_GET
@viewer_required
def schedule_preview(request: HttpRequest) -> HttpResponse:
    """The next 5 runs of ``cron`` in ``timezone`` (the form's live preview)."""
    cron = request.GET.get("cron", "")[:200]
    zone = request.GET.get("timezone", "") or "UTC"
    context: dict[str, Any] = {"cron": cron, "zone": zone[:64], "runs": [], "error": ""}
    if cron.strip():
        try:
            context["runs"] = services.next_runs(cron, zone)
            context["now"] = timezone.now()
        except HQError as exc:
            context["error"] = exc.message
    return render(request, "jobs/_next_runs.html", context)
