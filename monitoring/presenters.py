"""Monitoring rows shaped for the templates: sparkline geometry, seconds to milliseconds
for ``duration_ms``, failure-rate tones, which queue needs attention.

Pure functions over the dicts ``monitoring.selectors`` returns, shared by the monitoring
pages and by any page that shows a queue or worker row (the alert page's snapshot).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from jobs.tap_health import TapHealth

from . import selectors

Row = dict[str, Any]

#: failure rate (0..1) from which the rate is shown as bad rather than as a warning
FAILURE_BAD = 0.05
#: a queue "needs attention" for its failures from this rate over the last hour, with at
#: least FAILING_MIN failures (one failure out of three is noise, not an incident)
FAILING_RATE, FAILING_MIN = 0.2, 5
SPARK_W, SPARK_H, SPARK_PAD = 96, 24, 2


def server_card(server: Row, tap: TapHealth | None = None) -> Row:
    """A server as its card shows it; ``tap``: the health of the tap recording it, when
    one reports (the card says "tap: unhealthy (writer dead / lagging 12 s)")."""
    now = timezone.now()
    card = dict(server)
    card["tap"] = None if tap is None else {
        "healthy": tap.healthy, "text": tap.text, "reasons": tap.codes}
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


def queue_row(queue: Row) -> Row:
    row = dict(queue)
    age = queue["oldest_queued_age_s"]
    row["age_ms"] = None if age is None else age * 1000
    row["url"] = queue_url(queue["function"])
    row["listed"] = queue["queued"] is not None  # gearmand's last status names it
    row["no_workers"] = bool(queue["queued"]) and not queue["workers"]
    row["failing"] = failing(queue)
    row["flag"] = ("no-workers" if row["no_workers"]
                   else "backed-up" if queue["backed_up"]
                   else "failing" if row["failing"] else "")
    row["failure_pct"], row["failure_tone"] = failure(queue["failure_rate_1h"])
    row["spark"] = sparkline(queue["sparkline"])
    return row


def failing(queue: Row) -> bool:
    """A queue whose last hour failed badly enough to look at now: at least
    ``FAILING_MIN`` failures and ``FAILING_RATE`` of what finished."""
    rate = queue["failure_rate_1h"]
    return rate is not None and rate >= FAILING_RATE and queue["failed_1h"] >= FAILING_MIN


#: the order queues that need attention come in (most urgent first)
FLAG_RANK = {"no-workers": 0, "backed-up": 1, "alerting": 2, "failing": 3}


def attention_order(row: Row) -> tuple[int, int, float, str, str]:
    """Sort key of a flagged row: its flag, then the deepest queue, the oldest job."""
    return (FLAG_RANK.get(row["flag"], 3), -(row["queued"] or 0), -(row["age_ms"] or 0),
            row["function"], row["server"])


def queue_url(function: str) -> str | None:
    try:
        return reverse("queue-detail", args=[function])
    except NoReverseMatch:  # an empty function name has no page
        return None


def failure(rate: float | None) -> tuple[str | None, str]:
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


def total(rows: Iterable[Row], key: str) -> int:
    return sum(r[key] or 0 for r in rows)


def totals(rows: list[Row], servers: list[Row]) -> Row:
    completed, failed = total(rows, "completed_1h"), total(rows, "failed_1h")
    done = completed + failed
    pct, tone = failure(failed / done if done else None)
    return {
        "servers": len(servers), "up": sum(s["status"] == "up" for s in servers),
        "queued": total(rows, "queued"), "running": total(rows, "running"),
        "completed": completed, "failed": failed, "failure_pct": pct, "failure_tone": tone,
        "attention": sum(bool(r["flag"]) for r in rows),
    }


def worker_row(worker: Row) -> Row:
    row = dict(worker)
    job = worker["current_job"]
    if job is not None:
        job = row["current_job"] = dict(job)
        running = job["running_s"]
        job["running_ms"] = None if running is None else running * 1000
        job["url"] = reverse("job-detail", args=[job["id"]]) if job["id"] else None
    return row


def has_data(points: list[Row]) -> dict[str, bool]:
    """Which charts have something to draw (the others show an empty state)."""
    return {
        "depth": any(p["queue_depth"] is not None for p in points),
        "jobs": any(p["submitted"] or p["completed"] or p["failed"] for p in points),
        "finished": any(p["completed"] or p["failed"] for p in points),
        "runtime": any(p["runtime_p50_ms"] is not None for p in points),
        "wait": any(p["wait_p95_ms"] is not None for p in points),
    }


def summary(rows: list[Row]) -> Row | None:
    """The queue across servers: counts add up; percentiles only when one server has it."""
    if not rows:
        return None
    completed, failed = total(rows, "completed_1h"), total(rows, "failed_1h")
    done = completed + failed
    pct, tone = failure(failed / done if done else None)
    ages = [r["age_ms"] for r in rows if r["age_ms"] is not None]
    one = rows[0] if len(rows) == 1 else None
    return {
        "queued": total(rows, "queued"), "running": total(rows, "running"),
        "workers": total(rows, "workers"), "age_ms": max(ages) if ages else None,
        "completed": completed, "failed": failed, "failure_pct": pct, "failure_tone": tone,
        "runtime_p50_ms": one and one["runtime_p50_ms"],
        "runtime_p95_ms": one and one["runtime_p95_ms"],
        "wait_p95_ms": one and one["wait_p95_ms"],
        "flag": next((r["flag"] for r in rows if r["flag"] == "no-workers"), "")
        or next((r["flag"] for r in rows if r["flag"]), ""),
        "per_server": len(rows) > 1,
    }
