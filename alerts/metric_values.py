"""What each alert metric measures now, per server and function: the values rules compare.

Built from monitoring's public reads (latest queue snapshots, oldest queued and longest
running jobs, rollup sums) and, for ``tap_health``, the taps' reports in Redis, read once
per evaluation tick for every rule.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta

from django.utils import timezone

from jobs.models import Server
from monitoring import histogram, selectors
from monitoring import taps as tap_reports

log = logging.getLogger(__name__)

#: drain_time when nothing completes: a year stands for "never"
NEVER_S = 365 * 86400.0
#: the "function" of per-server metrics (tap_health): rules on them use function "*"
TAP_FUNCTION = "*"
#: metrics judged over each rule's window (keyed ``"metric@window_seconds"``)
WINDOWED = ("failure_rate", "runtime_p95", "drain_time")

Values = dict[tuple[int, str], dict[str, float | None]]


def metric_key(metric: str, window_seconds: int) -> str:
    return f"{metric}@{window_seconds}" if metric in WINDOWED else metric


def alert_metrics(windows: set[int], now: datetime | None = None) -> Values:
    """Every alertable metric per (server id, function), as the alert rules name them.

    Windowed metrics are keyed ``"failure_rate@300"`` (metric @ window seconds). A value
    is None when there is nothing to judge (no jobs finished in the window; ``workers``
    while nothing is queued and no worker is connected).
    """
    now = now or timezone.now()
    out: Values = defaultdict(dict)
    live: dict[tuple[int, str], int] = {}  # queued now
    for sid, _name, function, total, running, workers, _at in selectors.latest_snapshots(
            since=now - selectors.FRESH):
        queued = max(total - running, 0)
        live[(sid, function)] = queued
        out[(sid, function)].update(
            queue_depth=queued, workers=workers if (queued or workers) else None,
            stranded=queued if workers == 0 else 0, oldest_queued_age=0.0,
            running_too_long=0.0)
    for key, oldest in selectors.oldest_queued().items():
        if live.get(key, 0):
            out[key]["oldest_queued_age"] = (now - oldest).total_seconds()
    for key, started in selectors.running_since().items():
        out[key]["running_too_long"] = (now - started).total_seconds()
    for window in windows:
        _add_window(out, live, window, now)
    _add_taps(out, now)
    return out


def _add_taps(out: Values, now: datetime) -> None:
    """``tap_health`` per server that has a tap reporting (function ``*``): 1 healthy,
    0 not (``jobs.tap_health``: stale, a dead thread, Postgres away, lagging...). Redis
    down: no values (the other metrics still count)."""
    try:
        taps = tap_reports.taps_health(now.timestamp())
    except Exception as exc:
        log.warning("tap health unavailable for alerts: %s", exc)
        return
    ids = dict(Server.objects.filter(name__in=list(taps)).values_list("name", "id"))
    for name, health in taps.items():
        if name in ids:
            out[(ids[name], TAP_FUNCTION)]["tap_health"] = 1.0 if health.healthy else 0.0


def _add_window(out: Values, live: dict[tuple[int, str], int], window: int,
                now: datetime) -> None:
    since = selectors.minute_of(now - timedelta(seconds=window))
    for key, agg in selectors.rollup_sums(since=since).items():
        m = out[key]
        done = agg["completed"] + agg["failed"]
        m[f"failure_rate@{window}"] = agg["failed"] / done if done else None
        m[f"runtime_p95@{window}"] = histogram.percentile(agg["runtime"], 95)
        queued = live.get(key, 0)
        rate = agg["completed"] / window
        m[f"drain_time@{window}"] = (queued / rate if rate else NEVER_S) if queued else 0.0
    for key, queued in live.items():
        out[key].setdefault(f"drain_time@{window}", NEVER_S if queued else 0.0)
