"""What each alert metric measures now, per server and function: the values rules compare.

Built from monitoring's public reads (latest queue snapshots, oldest queued and longest
running jobs, rollup sums, the admin poller's state of each server, the submit → finish
times of jobs finished in a window) and, for ``tap_health``, the taps' reports in Redis,
read once per evaluation tick for every rule.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Set
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from jobs.models import Server
from jobs.recovery import engine as recovery
from monitoring import histogram, selectors
from monitoring import taps as tap_reports
from monitoring.services import DOWN_AFTER

log = logging.getLogger(__name__)

#: drain_time when nothing completes: a year stands for "never"
NEVER_S = 365 * 86400.0
#: the "function" of per-server metrics: rules on them use function "*"
SERVER_FUNCTION = TAP_FUNCTION = "*"
#: metrics measured per server, not per queue (their rules' function glob does not apply)
PER_SERVER = ("tap_health", "server_down")
#: metrics judged over each rule's window (keyed ``"metric@window_seconds"``)
WINDOWED = ("failure_rate", "runtime_p95", "drain_time", "time_to_complete_p95",
            "dead_letters")
#: a server whose poller has written nothing for this long is no longer watched (retired,
#: or its tap gone for good): ``server_down`` has no value for it, as a tap report expires
UNWATCHED_S = tap_reports.TAP_KEY_TTL_S

Values = dict[tuple[int, str], dict[str, float | None]]


def metric_key(metric: str, window_seconds: int) -> str:
    return f"{metric}@{window_seconds}" if metric in WINDOWED else metric


def alert_metrics(windows: set[int], now: datetime | None = None, *,
                  complete_windows: Set[int] = frozenset()) -> Values:
    """Every alertable metric per (server id, function), as the alert rules name them.

    Windowed metrics are keyed ``"failure_rate@300"`` (metric @ window seconds). A value
    is None when there is nothing to judge (no jobs finished in the window; ``workers``
    while nothing is queued and no worker is connected). ``time_to_complete_p95`` reads
    jobs rather than rollups, so it is computed only for ``complete_windows`` (the
    evaluator adds it with :func:`add_time_to_complete` for the windows of its rules).
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
    starts = {window: selectors.minute_of(now - timedelta(seconds=window))
              for window in windows}
    sums = selectors.rollup_windows(starts.values())  # every window in one scan
    for window, start in starts.items():
        _add_window(out, live, window, sums[start])
    add_time_to_complete(out, complete_windows, now)
    _add_dead_letters(out, windows, now)
    _add_taps(out, now)
    _add_servers(out, now)
    return out


def add_time_to_complete(out: Values, windows: Set[int], now: datetime) -> None:
    """Add ``time_to_complete_p95@W`` (ms) for each window W to ``out``: submit → finish
    of the jobs that completed or failed in the window, its p95 read from the same
    log-scale histogram as ``runtime_p95``. A job that was requeued (a worker died)
    counts all its runs; one scan of jobs serves every window."""
    if not windows:
        return
    for window, hists in selectors.time_to_complete(windows=windows, until=now).items():
        for key, hist in hists.items():
            value = histogram.percentile(hist, 95)
            out.setdefault(key, {})[f"time_to_complete_p95@{window}"] = value


def _add_dead_letters(out: Values, windows: Set[int], now: datetime) -> None:
    """``dead_letters@W``: dead letters (still on the list) per queue whose job failed in
    the window W; ``job_of_death``: those flagged job of death. 0 for every other queue
    HQ knows now (so a rule on them resolves), read from the partial index of dead
    letters (small)."""
    for window in windows:
        name = f"dead_letters@{window}"
        counts = recovery.dead_letters_by_function(since=now - timedelta(seconds=window))
        for key in list(out):
            out[key].setdefault(name, 0.0)
        for key, count in counts.items():
            out[key][name] = float(count)
    for key in list(out):
        out[key].setdefault("job_of_death", 0.0)
    for key, count in recovery.jobs_of_death_by_function().items():
        out[key]["job_of_death"] = float(count)


def silence_limit_s() -> float:
    """Silence (no answer to the admin poll) longer than this is ``server_down``: the
    poller's own verdict (DOWN_AFTER failed polls in a row) in time."""
    return float(DOWN_AFTER * settings.HQ_POLL_INTERVAL)


def _add_servers(out: Values, now: datetime) -> None:
    """``server_down`` per server the admin poller watches (function ``*``): 0 while
    gearmand answers it; else the seconds since gearmand last answered (since HQ first
    heard of it, if never). Down means the poller's last word is "down" (DOWN_AFTER failed
    polls in a row) or no answer for more than DOWN_AFTER poll intervals (the tap that
    polls it is gone or cannot write: ``tap_health`` says which). A server nobody has
    polled for UNWATCHED_S has no value."""
    limit = silence_limit_s()
    for s in selectors.poll_states():
        if s.polled_at is None or (now - s.polled_at).total_seconds() > UNWATCHED_S:
            continue
        silent = max((now - (s.last_answer or s.created_at)).total_seconds(), 0.0)
        down = not s.up or silent > limit
        out[(s.server_id, SERVER_FUNCTION)]["server_down"] = silent if down else 0.0


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
                sums: dict[tuple[int, str], dict[str, Any]]) -> None:
    for key, agg in sums.items():
        m = out[key]
        done = agg["completed"] + agg["failed"]
        m[f"failure_rate@{window}"] = agg["failed"] / done if done else None
        m[f"runtime_p95@{window}"] = histogram.percentile(agg["runtime"], 95)
        queued = live.get(key, 0)
        rate = agg["completed"] / window
        m[f"drain_time@{window}"] = (queued / rate if rate else NEVER_S) if queued else 0.0
    for key, queued in live.items():
        out[key].setdefault(f"drain_time@{window}", NEVER_S if queued else 0.0)
