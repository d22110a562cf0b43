"""Web pages for monitoring: the overview (servers and queues), workers, one queue's charts.

Each page renders whole or as its live fragment (``hq.web.render_page``). Reads come from
``monitoring.selectors``, row shaping from ``monitoring.presenters``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_GET, require_POST

from hq.errors import HQError, InvalidInput
from hq.models import Role
from hq.web import HtmxHttpRequest, is_fragment, render_page, role_required, viewer_required
from jobs import retention
from jobs.tap_health import TapHealth

from . import retire, selectors
from .overview import Options, overview_context
from .presenters import has_data, queue_row, summary, worker_row

DEFAULT_RANGE = "1h"
OPERATORS_ONLY = "Only operators and admins may retire a server."
STEP_LABELS = {60: "per minute", 300: "per 5 min", 900: "per 15 min", 3600: "per hour"}


@require_GET
@viewer_required
def overview(request: HtmxHttpRequest) -> HttpResponse:
    opts = Options.from_query(request.GET)
    context = overview_context(opts, selectors.servers(), selectors.shared_queues(),
                               _taps_health())
    if not is_fragment(request):  # the page head, not the live part: once per visit
        context["history"] = {**retention.storage(),
                              "retention_days": settings.HQ_EVENT_RETENTION_DAYS}
    return render_page(request, "monitoring/overview.html", "monitoring/_overview.html", context)


@require_POST
@role_required(Role.OPERATOR, OPERATORS_ONLY)
def server_retire(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Retire a server nothing polls (``retired=1``) or show it again (``retired=0``)."""
    retired = request.POST.get("retired", "1") == "1"
    try:
        server = retire.set_retired(server_id=pk, retired=retired, user=request.user)
    except HQError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{server.name} is retired: hidden from the overview, "
                                  "its history kept." if retired
                         else f"{server.name} is listed again.")
    back = request.POST.get("next", "")
    return redirect(back if back.startswith("/") and not back.startswith("//") else "overview")


def _taps_health() -> dict[str, TapHealth]:
    """The taps' health from Redis; none when Redis does not answer (the page still shows)."""
    try:
        return selectors.shared_taps_health()
    except Exception:
        return {}


@require_GET
@viewer_required
def workers(request: HtmxHttpRequest) -> HttpResponse:
    hidden = set() if request.GET.get("retired") == "1" else selectors.retired_servers()
    rows = [worker_row(w) for w in selectors.shared_workers() if w["server"] not in hidden]
    busy = sum(r["current_job"] is not None for r in rows)
    context = {
        "workers": rows, "busy": busy, "idle": len(rows) - busy,
        "many_servers": len({r["server"] for r in rows}) > 1,
    }
    return render_page(request, "monitoring/workers.html", "monitoring/_workers.html", context)


@require_GET
@viewer_required
def queue_detail(request: HtmxHttpRequest, function: str) -> HttpResponse:
    range_name = request.GET.get("range", "").strip() or DEFAULT_RANGE
    server = request.GET.get("server", "").strip() or None
    context: dict[str, Any] = {"function": function, "range": range_name, "server": server,
                               "ranges": list(selectors.RANGES), "error": None}
    try:
        range_s, step_s = selectors.parse_range(range_name, None)
    except InvalidInput as exc:
        context["error"] = exc
        return render_page(request, "monitoring/queue.html", "monitoring/_queue.html",
                           context, status=400)
    every = [q for q in selectors.shared_queues() if q["function"] == function]
    rows = [queue_row(q) for q in every if server is None or q["server"] == server]
    stats = selectors.queue_stats(function, range_s, step_s, server=server)
    failures = selectors.recent_failures(function)
    has = has_data(stats["points"])
    context.update(
        rows=rows, summary=summary(rows), stats=stats, has=has, failures=failures,
        step_label=STEP_LABELS.get(step_s, f"per {step_s // 60} min"),
        servers=sorted({q["server"] for q in every}),
        known=bool(rows or failures or any(has.values())),
    )
    return render_page(request, "monitoring/queue.html", "monitoring/_queue.html", context)
