"""``GET /metrics``: Prometheus text, read at scrape time from Postgres and Redis.

Nothing is counted in the web process (several may run): a custom collector reads

* the latest queue snapshot per server and function (``hq_queue_*`` gauges),
* per-minute rollups: ``hq_jobs_{submitted,completed,failed}_total`` counters and the
  ``hq_job_runtime_seconds`` histogram (the rollups' fixed log buckets, reduced to one
  ``le`` every two doublings: 1 ms, 4 ms, 16 ms ... 4.66 h),
* the poller's server state (``hq_server_up``),
* each tap's counters from the Redis hash ``hq:tap:<server>`` (``hq_tap_*``), and its
  health as ``jobs.tap_health`` judges it (``hq_tap_healthy``, ``hq_tap_unhealthy{reason}``).

Counters from rollups: summing every minute row at every scrape would grow with history,
so minutes older than ``SETTLE`` (late rows still arrive for a few minutes) are summed
once into a base kept in Redis (per database) with its watermark, and each scrape adds
only the rows since the watermark. The base only grows, so retention deleting old rollups
does not make counters go down; losing the Redis key starts from a full sum again.

Histogram ``_sum`` is estimated from bucket midpoints (rollups keep counts, not sums).

When ``HQ_METRICS_TOKEN`` is set, ``Authorization: Bearer <token>`` is required.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from jobs.models import Server
from jobs.tap_health import assess

from . import histogram, live, selectors, taps
from .models import ServerState

log = logging.getLogger(__name__)

#: queue snapshots older than this are not reported (the function left gearmand's status)
SNAPSHOT_MAX_AGE = timedelta(minutes=15)
#: rollup minutes older than this are final and folded into the cached base
SETTLE = timedelta(minutes=10)
BASE_KEY = "hq:metrics:rollups:{db}"
#: indexes into the rollup histogram whose upper edges become the ``le`` buckets
LE_INDEXES = tuple(range(0, histogram.SIZE - 1, 2 * histogram.PER_DOUBLING))
LE_SECONDS = tuple(histogram.upper_edge(i) / 1000 for i in LE_INDEXES)


def _now() -> datetime:
    return datetime.now(UTC)


# -- the view ------------------------------------------------------------------------------

@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    token = os.environ.get("HQ_METRICS_TOKEN", "")
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 token.encode()):
            response = HttpResponse("metrics need Authorization: Bearer <HQ_METRICS_TOKEN>\n",
                                    status=401, content_type="text/plain")
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HQCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


class HQCollector:
    """Reads current values at each ``collect()``; one failing source does not hide the
    others (``hq_scrape_error{source}`` says which failed)."""

    def collect(self) -> Iterator[Metric]:
        errors = GaugeMetricFamily("hq_scrape_error",
                                   "1 when a source could not be read in this scrape",
                                   labels=["source"])
        for name, source in (("queues", queue_metrics), ("rollups", rollup_metrics),
                             ("servers", server_metrics), ("taps", tap_metrics)):
            try:
                families = list(source())
            except redis.RedisError as exc:
                log.warning("/metrics: %s unavailable: %s", name, exc)
                errors.add_metric([name], 1)
                continue
            except Exception:
                log.exception("/metrics: %s unavailable", name)
                errors.add_metric([name], 1)
                continue
            errors.add_metric([name], 0)
            yield from families
        yield errors


# -- queues and servers ----------------------------------------------------------------------

def queue_metrics() -> Iterator[Metric]:
    labels = ["server", "function"]
    depth = GaugeMetricFamily("hq_queue_depth", "Jobs queued and not running (gearmand status)",
                              labels=labels)
    running = GaugeMetricFamily("hq_queue_running", "Jobs running (gearmand status)",
                                labels=labels)
    workers = GaugeMetricFamily("hq_queue_workers", "Workers able to run the function",
                                labels=labels)
    for _sid, server, function, total, run, work, _at in selectors.latest_snapshots(
            since=_now() - SNAPSHOT_MAX_AGE):
        depth.add_metric([server, function], max(total - run, 0))
        running.add_metric([server, function], run)
        workers.add_metric([server, function], work)
    yield from (depth, running, workers)


def server_metrics() -> Iterator[Metric]:
    up = GaugeMetricFamily("hq_server_up", "1 when the last admin poll of gearmand answered",
                           labels=["server"])
    polled = GaugeMetricFamily("hq_server_last_poll_timestamp_seconds",
                               "When the admin poller last polled the server",
                               labels=["server"])
    for name, is_up, polled_at in (ServerState.objects.order_by("server__name")
                                   .values_list("server__name", "up", "polled_at")):
        up.add_metric([name], 1 if is_up else 0)
        if polled_at is not None:
            polled.add_metric([name], polled_at.timestamp())
    yield from (up, polled)


# -- rollups -----------------------------------------------------------------------------------

@dataclass
class Totals:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LE_INDEXES) + 1))
    runtime_sum_s: float = 0.0

    def add(self, other: Totals) -> None:
        self.submitted += other.submitted
        self.completed += other.completed
        self.failed += other.failed
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.runtime_sum_s += other.runtime_sum_s


Series = dict[tuple[str, str], Totals]

def _reduced_index(i: int) -> int:
    for k, edge in enumerate(LE_INDEXES):
        if i <= edge:
            return k
    return len(LE_INDEXES)


_REDUCED = [_reduced_index(i) for i in range(histogram.SIZE)]
_MIDDLE_S = [0.0005] + [math.sqrt(histogram.lower_edge(i) * histogram.upper_edge(i)) / 1000
                        for i in range(1, histogram.SIZE)]


def sum_rollups(lo: datetime | None, hi: datetime | None) -> Series:
    """Per (server, function): rollup rows with ``lo <= minute < hi`` added up."""
    names = dict(Server.objects.values_list("id", "name"))
    series: Series = {}
    for (sid, function), agg in selectors.rollup_sums(since=lo, until=hi).items():
        totals = series[(names.get(sid, "?"), function)] = Totals(
            agg["submitted"], agg["completed"], agg["failed"])
        for i, count in enumerate(agg["runtime"]):
            if count:
                totals.buckets[_REDUCED[i]] += count
                totals.runtime_sum_s += count * _MIDDLE_S[i]
    return series


def _minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def _base_key() -> str:
    """Per database (name and oid: a recreated database gets a new base)."""
    with connection.cursor() as cur:
        cur.execute("SELECT oid FROM pg_database WHERE datname = current_database()")
        (oid,) = cur.fetchone()
    s = connection.settings_dict
    return BASE_KEY.format(db=f"{s['HOST']}:{s['PORT']}:{s['NAME']}:{oid}")


def _encode(watermark: datetime, series: Series) -> str:
    return json.dumps({"watermark": watermark.isoformat(), "series": [
        [server, function, t.submitted, t.completed, t.failed, t.buckets, t.runtime_sum_s]
        for (server, function), t in series.items()]})


def _decode(raw: bytes | str) -> tuple[datetime, Series]:
    data = json.loads(raw)
    series = {(s, f): Totals(sub, comp, fail, list(buckets), float(rsum))
              for s, f, sub, comp, fail, buckets, rsum in data["series"]}
    return datetime.fromisoformat(data["watermark"]), series


def _settled_base(client: redis.Redis | None, key: str, target: datetime,
                  ) -> tuple[datetime, Series]:
    """The cached sums of all minutes before ``target``, advanced and stored if behind."""
    cached = None
    if client is not None:
        try:
            raw = client.get(key)
            cached = _decode(raw) if raw else None
        except (redis.RedisError, ValueError, KeyError, TypeError) as exc:
            log.warning("/metrics: rollup base unreadable (%s); summing from scratch", exc)
            client = None if isinstance(exc, redis.RedisError) else client
    if cached is not None and cached[0] >= target:
        return cached
    if cached is None:
        watermark, base = target, sum_rollups(None, target)
    else:
        watermark, base = target, cached[1]
        for k, v in sum_rollups(cached[0], target).items():
            base.setdefault(k, Totals()).add(v)
    if client is not None:
        _store_base(client, key, cached[0] if cached else None, watermark, base)
    return watermark, base


def _store_base(client: redis.Redis, key: str, previous: datetime | None,
                watermark: datetime, base: Series) -> None:
    """Store unless another process moved the base meanwhile (optimistic, WATCH)."""
    try:
        with client.pipeline() as pipe:
            pipe.watch(key)
            raw = pipe.get(key)
            current = _decode(raw)[0] if raw else None
            if current != previous:
                return
            pipe.multi()
            pipe.set(key, _encode(watermark, base))
            pipe.execute()
    except redis.WatchError:
        pass
    except (redis.RedisError, ValueError) as exc:
        log.warning("/metrics: rollup base not stored (%s)", exc)


def rollup_series() -> Series:
    target = _minute(_now() - SETTLE)
    try:
        client: redis.Redis | None = live.redis_client()
    except Exception:
        client = None
    watermark, base = _settled_base(client, _base_key(), target)
    totals: Series = {k: Totals(v.submitted, v.completed, v.failed, list(v.buckets),
                                v.runtime_sum_s) for k, v in base.items()}
    for k, v in sum_rollups(watermark, None).items():
        totals.setdefault(k, Totals()).add(v)
    return totals


def rollup_metrics() -> Iterator[Metric]:
    labels = ["server", "function"]
    counters = {
        name: CounterMetricFamily(f"hq_jobs_{name}", f"Jobs {name} (per-minute rollups)",
                                  labels=labels)
        for name in ("submitted", "completed", "failed")
    }
    runtime = HistogramMetricFamily("hq_job_runtime_seconds",
                                    "Job runtime, last start to finish (rollup histograms)",
                                    labels=labels)
    for (server, function), t in sorted(rollup_series().items()):
        for name, family in counters.items():
            family.add_metric([server, function], getattr(t, name))
        cumulative, buckets = 0, []
        for le, n in zip(LE_SECONDS, t.buckets, strict=False):
            cumulative += n
            buckets.append((_le(le), cumulative))
        buckets.append(("+Inf", cumulative + t.buckets[-1]))
        runtime.add_metric([server, function], buckets, t.runtime_sum_s)
    yield from counters.values()
    yield runtime


def _le(seconds: float) -> str:
    return f"{seconds:.6f}".rstrip("0").rstrip(".")


# -- taps ----------------------------------------------------------------------------------------

#: (metric, help, kind, path into the tap's stats dict; the first path present wins)
TAP_METRICS: tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...] = (
    ("hq_tap_events", "Job events produced by the tracker", "counter",
     (("tracker", "events"),)),
    ("hq_tap_events_written", "Events committed to Postgres", "counter",
     (("writer", "events_written"),)),
    ("hq_tap_kernel_drops", "Packets the kernel dropped before tcpdump (capture mode)",
     "counter", (("source", "kernel_drops"),)),
    ("hq_tap_resync_gaps", "Stream gaps the decoder resynchronised after", "counter",
     (("tap", "gaps"), ("source", "gaps"))),
    ("hq_tap_decode_errors", "Bytes the codec could not decode (skipped runs)", "counter",
     (("tap", "decode_errors"),)),
    ("hq_tap_db_errors", "Failed writes to Postgres (batches spooled)", "counter",
     (("writer", "db_errors"),)),
    ("hq_tap_quarantined_events", "Events Postgres refused, kept in the quarantine folder",
     "counter", (("writer", "quarantined_events"),)),
    ("hq_tap_corrupt_spool_files", "Unreadable spool files moved to the quarantine folder",
     "counter", (("writer", "corrupt_spool_files"),)),
    ("hq_tap_spool_dropped_events", "Spooled events dropped at HQ_SPOOL_MAX (oldest first)",
     "counter", (("writer", "spool_dropped_events"),)),
    ("hq_tap_lost_events", "Events neither written nor spooled (the spool could not be written)",
     "counter", (("writer", "lost_events"),)),
    ("hq_tap_child_restarts", "Proxy mode: restarts of the decoding child", "counter",
     (("proxy", "child_restarts"),)),
    ("hq_tap_child_lost_bytes", "Proxy mode: forwarded bytes not recorded while the decoding "
     "child was down (at least)", "counter", (("proxy", "child_lost_bytes"),)),
    ("hq_tap_forged_replies", "WORK_* replies not from the job's worker (ignored, as "
     "gearmand ignores them)", "counter", (("tracker", "forged"),)),
    ("hq_tap_malformed_packets", "Packets the tracker could not use (bad fields)", "counter",
     (("tracker", "malformed"),)),
    ("hq_tap_values_cleaned", "Wire strings escaped or cut to be storable", "counter",
     (("tracker", "values_cleaned"),)),
    ("hq_tap_bad_numbers", "Progress numbers and epochs out of range (stored as none)",
     "counter", (("tracker", "bad_numbers"),)),
    ("hq_tap_tracker_errors", "Packets whose handling raised (counted, skipped)", "counter",
     (("tap", "tracker_errors"),)),
    ("hq_tap_budget_dropped_bytes", "Unparsed bytes dropped at the memory budget", "counter",
     (("tap", "budget_dropped_bytes"),)),
    ("hq_tap_admin_lines_skipped", "Admin protocol reply lines that could not be parsed",
     "counter", (("process", "admin_lines_skipped"),)),
    ("hq_tap_jobs_followed", "Jobs the tracker follows now", "gauge", (("tracker", "jobs"),)),
    ("hq_tap_connections", "Connections the tracker follows now", "gauge",
     (("tracker", "conns"),)),
    ("hq_tap_spool_batches", "Batches waiting in the disk spool", "gauge",
     (("writer", "spool_batches"),)),
    ("hq_tap_spool_bytes", "Bytes in the disk spool", "gauge", (("writer", "spool_bytes"),)),
    ("hq_tap_spool_max_bytes", "The spool's bound (HQ_SPOOL_MAX; 0: none)", "gauge",
     (("writer", "spool_max"),)),
    ("hq_tap_queued_events", "Events waiting for the writer", "gauge",
     (("writer", "queued"),)),
    ("hq_tap_writer_alive", "1 while the tap's writer thread runs", "gauge",
     (("writer", "writer_alive"),)),
)


def _dig(stats: dict[str, Any], paths: tuple[tuple[str, str], ...]) -> float | None:
    for section, name in paths:
        part = stats.get(section)
        value = part.get(name) if isinstance(part, dict) else None
        if isinstance(value, bool):
            return float(value)
        if isinstance(value, int | float):
            return float(value)
    return None


def tap_metrics() -> Iterator[Metric]:
    families = []
    reports = taps.read_tap_stats()
    for name, doc, kind, paths in TAP_METRICS:
        cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        family = cls(name, doc, labels=["server"])
        for server, (stats, _) in sorted(reports.items()):
            value = _dig(stats, paths)
            if value is not None:
                family.add_metric([server], value)
        families.append(family)
    lag = GaugeMetricFamily("hq_tap_ingest_lag_seconds",
                            "Age of the oldest event not yet committed (0: caught up)",
                            labels=["server"])
    age = GaugeMetricFamily("hq_tap_stats_age_seconds",
                            "Seconds since the tap last reported (stale: the tap is down)",
                            labels=["server"])
    now = time.time()
    for server, (stats, updated) in sorted(reports.items()):
        lag_ms = _dig(stats, (("writer", "lag_ms"),))
        if lag_ms is not None:
            lag.add_metric([server], max(lag_ms, 0) / 1000)
        age.add_metric([server], max(now - updated, 0.0))
    yield from (*families, lag, age, *health_metrics(reports, now))


def health_metrics(taps: dict[str, tuple[dict[str, Any], float]],
                   now: float) -> Iterator[Metric]:
    """``hq_tap_healthy`` (0/1) and, per reason it is not, ``hq_tap_unhealthy{reason}``."""
    healthy = GaugeMetricFamily("hq_tap_healthy",
                                "1 when the tap records (fresh report, writer alive, "
                                "Postgres reachable, not lagging, spool below 80 %)",
                                labels=["server"])
    unhealthy = GaugeMetricFamily("hq_tap_unhealthy",
                                  "1 for each reason the tap is unhealthy (stale, stopped, "
                                  "thread_dead, writer_dead, child_down, db_down, lagging, "
                                  "spool_full, quarantined)", labels=["server", "reason"])
    lag_max = float(settings.HQ_TAP_LAG_MAX_S)
    for server, (stats, updated) in sorted(taps.items()):
        verdict = assess(server, stats, updated, now, lag_max_s=lag_max)
        healthy.add_metric([server], 1 if verdict.healthy else 0)
        for code in verdict.codes:
            unhealthy.add_metric([server, code], 1)
    yield from (healthy, unhealthy)
