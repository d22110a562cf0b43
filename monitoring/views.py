"""Web pages for monitoring: the overview (servers and queues), workers, one queue's charts.

Each page renders whole or as its live fragment (``hq.web.render_page``). Reads come from
``monitoring.selectors``, row shaping from ``monitoring.presenters``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpResponse
from django.views.decorators.http import require_GET

from hq.errors import InvalidInput
from hq.web import HtmxHttpRequest, is_fragment, render_page, viewer_required
from jobs import retention
from jobs.tap_health import TapHealth

from . import selectors
from .presenters import has_data, queue_row, server_card, summary, totals, worker_row

DEFAULT_RANGE = "1h"
STEP_LABELS = {60: "per minute", 300: "per 5 min", 900: "per 15 min", 3600: "per hour"}


@require_GET
@viewer_required
def overview(request: HtmxHttpRequest) -> HttpResponse:
    taps = _taps_health()
    servers = [server_card(s, taps.get(s["name"])) for s in selectors.servers()]
    rows = [queue_row(q) for q in selectors.shared_queues()]
    context = {
        "servers": servers, "queues": rows, "totals": totals(rows, servers),
        "attention": [r for r in rows if r["flag"]],
        "many_servers": len(servers) > 1 or len({r["server"] for r in rows}) > 1,
    }
    if not is_fragment(request):  # the page head, not the live part: once per visit
        context["history"] = {**retention.storage(),
                              "retention_days": settings.HQ_EVENT_RETENTION_DAYS}
    return render_page(request, "monitoring/overview.html", "monitoring/_overview.html", context)


def _taps_health() -> dict[str, TapHealth]:
    """The taps' health from Redis; none when Redis does not answer (the page still shows)."""
    try:
        return selectors.shared_taps_health()
    except Exception:
        return {}


@require_GET
@viewer_required
def workers(request: HtmxHttpRequest) -> HttpResponse:
    rows = [worker_row(w) for w in selectors.shared_workers()]
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
