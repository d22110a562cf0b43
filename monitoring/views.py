"""Web pages for monitoring: the overview (servers and queues), workers, one queue's charts.

Each page renders whole, or only its live fragment when htmx asks (``request.htmx``): the
fragment is re-fetched when the websocket says something changed (``static/js/live.js``)
and on a slow poll as a fallback, so nothing is built in JavaScript. Reads come from
``monitoring.selectors``; this module only shapes the rows for the templates (sparkline
geometry, seconds to milliseconds for ``duration_ms``, which row needs attention).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET
from django_htmx.middleware import HtmxDetails

from hq.errors import InvalidInput
from jobs.views import viewer_required

from . import selectors

Row = dict[str, Any]


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails  # set by django_htmx's middleware

#: seconds between fallback refreshes of a live fragment; ``?poll=N`` picks another
POLL_DEFAULT = 10
POLL_MIN, POLL_MAX = 1, 300
DEFAULT_RANGE = "1h"
#: failure rate (0..1) from which the rate is shown as bad rather than as a warning
FAILURE_BAD = 0.05
SPARK_W, SPARK_H, SPARK_PAD = 96, 24, 2
STEP_LABELS = {60: "per minute", 300: "per 5 min", 900: "per 15 min", 3600: "per hour"}


def _poll_seconds(request: HttpRequest) -> int:
    raw = request.GET.get("poll", "")
    return min(max(int(raw), POLL_MIN), POLL_MAX) if raw.isdigit() else POLL_DEFAULT


def _render(request: HtmxHttpRequest, page: str, fragment: str, context: dict[str, Any],
            status: int = 200) -> HttpResponse:
    """The whole page, or only its live fragment for htmx (not for a history restore)."""
    partial = bool(request.htmx) and not request.htmx.history_restore_request
    context["poll"] = _poll_seconds(request)
    response = render(request, fragment if partial else page, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


# ---------------------------------------------------------------- overview


@require_GET
@viewer_required
def overview(request: HtmxHttpRequest) -> HttpResponse:
    servers = [_server_card(s) for s in selectors.servers()]
    rows = [_queue_row(q) for q in selectors.queues()]
    context = {
        "servers": servers, "queues": rows, "totals": _totals(rows, servers),
        "attention": [r for r in rows if r["flag"]],
        "many_servers": len(servers) > 1 or len({r["server"] for r in rows}) > 1,
    }
    return _render(request, "monitoring/overview.html", "monitoring/_overview.html", context)


def _server_card(server: Row) -> Row:
    now = timezone.now()
    card = dict(server)
    polled = server["polled_at"]
    if server["up"] and polled and now - polled > selectors.FRESH:
        card["status"] = "stale"  # the tap that polls it has stopped
    elif server["up"]:
        card["status"] = "up"
    elif polled is None:
        card["status"] = "waiting"
    else:
        card["status"] = "down"
    uptime = server["uptime_s"]
    card["uptime_ms"] = None if uptime is None else uptime * 1000
    return card


def _queue_row(queue: Row) -> Row:
    row = dict(queue)
    age = queue["oldest_queued_age_s"]
    row["age_ms"] = None if age is None else age * 1000
    row["url"] = _queue_url(queue["function"])
    row["listed"] = queue["queued"] is not None  # gearmand's last status names it
    row["no_workers"] = bool(queue["queued"]) and not queue["workers"]
    row["flag"] = ("no-workers" if row["no_workers"]
                   else "backed-up" if queue["backed_up"] else "")
    row["failure_pct"], row["failure_tone"] = _failure(queue["failure_rate_1h"])
    row["spark"] = sparkline(queue["sparkline"])
    return row


def _queue_url(function: str) -> str | None:
    try:
        return reverse("queue-detail", args=[function])
    except NoReverseMatch:  # an empty function name has no page
        return None


def _failure(rate: float | None) -> tuple[str | None, str]:
    if rate is None:
        return None, ""
    pct = rate * 100
    text = f"{pct:.0f} %" if pct >= 10 or pct == 0 else f"{pct:.1f} %"
    tone = "bad" if rate >= FAILURE_BAD else "warn" if rate > 0 else "ok"
    return text, tone


def sparkline(values: Sequence[int]) -> Row | None:
    """Geometry of an inline SVG sparkline: the depth line and the area under it."""
    if len(values) < 2:
        return None
    top = max(values) or 1
    step = SPARK_W / (len(values) - 1)
    span = SPARK_H - 2 * SPARK_PAD
    xy = [(i * step, SPARK_H - SPARK_PAD - v / top * span) for i, v in enumerate(values)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    return {
        "w": SPARK_W, "h": SPARK_H, "line": line,
        "area": f"0,{SPARK_H} {line} {SPARK_W},{SPARK_H}",
        "last_x": f"{xy[-1][0]:.1f}", "last_y": f"{xy[-1][1]:.1f}",
        "now": values[-1], "max": max(values), "min": min(values), "count": len(values),
        "rising": values[-1] > values[0],
    }


def _total(rows: Iterable[Row], key: str) -> int:
    return sum(r[key] or 0 for r in rows)


def _totals(rows: list[Row], servers: list[Row]) -> Row:
    completed, failed = _total(rows, "completed_1h"), _total(rows, "failed_1h")
    done = completed + failed
    pct, tone = _failure(failed / done if done else None)
    return {
        "servers": len(servers), "up": sum(s["status"] == "up" for s in servers),
        "queued": _total(rows, "queued"), "running": _total(rows, "running"),
        "completed": completed, "failed": failed, "failure_pct": pct, "failure_tone": tone,
        "attention": sum(bool(r["flag"]) for r in rows),
    }


# ---------------------------------------------------------------- workers


@require_GET
@viewer_required
def workers(request: HtmxHttpRequest) -> HttpResponse:
    rows = [_worker_row(w) for w in selectors.workers()]
    busy = sum(r["current_job"] is not None for r in rows)
    context = {
        "workers": rows, "busy": busy, "idle": len(rows) - busy,
        "many_servers": len({r["server"] for r in rows}) > 1,
    }
    return _render(request, "monitoring/workers.html", "monitoring/_workers.html", context)


def _worker_row(worker: Row) -> Row:
    row = dict(worker)
    job = worker["current_job"]
    if job is not None:
        job = row["current_job"] = dict(job)
        running = job["running_s"]
        job["running_ms"] = None if running is None else running * 1000
        job["url"] = reverse("job-detail", args=[job["id"]]) if job["id"] else None
    return row


# ---------------------------------------------------------------- one queue


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
        return _render(request, "monitoring/queue.html", "monitoring/_queue.html", context,
                       status=400)
    every = [q for q in selectors.queues() if q["function"] == function]
    rows = [_queue_row(q) for q in every if server is None or q["server"] == server]
    stats = selectors.queue_stats(function, range_s, step_s, server=server)
    failures = selectors.recent_failures(function)
    has = _has_data(stats["points"])
    context.update(
        rows=rows, summary=_summary(rows), stats=stats, has=has, failures=failures,
        step_label=STEP_LABELS.get(step_s, f"per {step_s // 60} min"),
        servers=sorted({q["server"] for q in every}),
        known=bool(rows or failures or any(has.values())),
    )
    return _render(request, "monitoring/queue.html", "monitoring/_queue.html", context)


def _has_data(points: list[Row]) -> dict[str, bool]:
    """Which charts have something to draw (the others show an empty state)."""
    return {
        "depth": any(p["queue_depth"] is not None for p in points),
        "jobs": any(p["submitted"] or p["completed"] or p["failed"] for p in points),
        "finished": any(p["completed"] or p["failed"] for p in points),
        "runtime": any(p["runtime_p50_ms"] is not None for p in points),
        "wait": any(p["wait_p95_ms"] is not None for p in points),
    }


def _summary(rows: list[Row]) -> Row | None:
    """The queue across servers: counts add up; percentiles only when one server has it."""
    if not rows:
        return None
    completed, failed = _total(rows, "completed_1h"), _total(rows, "failed_1h")
    done = completed + failed
    pct, tone = _failure(failed / done if done else None)
    ages = [r["age_ms"] for r in rows if r["age_ms"] is not None]
    one = rows[0] if len(rows) == 1 else None
    return {
        "queued": _total(rows, "queued"), "running": _total(rows, "running"),
        "workers": _total(rows, "workers"), "age_ms": max(ages) if ages else None,
        "completed": completed, "failed": failed, "failure_pct": pct, "failure_tone": tone,
        "runtime_p50_ms": one and one["runtime_p50_ms"],
        "runtime_p95_ms": one and one["runtime_p95_ms"],
        "wait_p95_ms": one and one["wait_p95_ms"],
        "flag": next((r["flag"] for r in rows if r["flag"] == "no-workers"), "")
        or next((r["flag"] for r in rows if r["flag"]), ""),
        "per_server": len(rows) > 1,
    }
