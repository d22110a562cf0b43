"""Reads for monitoring: servers, queues, workers and per-queue time series.

Queue depth, running and worker counts come from gearmand's own ``status`` (the latest
poll), so jobs HQ never saw (submitted before it watched) are still counted. Rates and
percentiles come from minute rollups, never from a scan of jobs.

What every page and script asks for at once — the queue list, the workers list, the taps'
health — the web tier reads through :func:`shared_queues`, :func:`shared_workers` and
:func:`shared_taps_health`: computed once per ``HQ_SHARED_CACHE_S`` for every process
(``hq.shared_cache``). Alert evaluation and the rest call the plain selectors.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from django.db import connection
from django.db.models import Count
from django.utils import timezone

from hq.errors import InvalidInput
from hq.shared_cache import shared
from jobs.models import Job
from jobs.tap_health import TapHealth

from . import histogram, taps
from .models import Rollup, Server, ServerState, Worker

RANGES = {"15m": (900, 60), "1h": (3600, 60), "6h": (21600, 300), "24h": (86400, 900),
          "7d": (604800, 3600)}
SPARK_POINTS = 30
#: a snapshot older than this is not "now" (the tap that polls it has stopped)
FRESH = timedelta(minutes=2)


def servers() -> list[dict[str, Any]]:
    now = timezone.now()
    out = []
    for s in Server.objects.select_related("state").order_by("name"):
        state: ServerState | None = getattr(s, "state", None)  # a server never polled has none
        started = state.started_at if state else None
        out.append({
            "id": s.id, "name": s.name, "address": s.address,
            "up": bool(state and state.up), "version": state.version if state else "",
            "pid": state.pid if state else "", "started_at": started,
            "uptime_s": (int((now - started).total_seconds())
                         if started and state and state.up else None),
            "polled_at": state.polled_at if state else None,
            "down_since": state.down_since if state else None,
            "last_error": state.last_error if state else "",
        })
    return out


def retired_servers() -> set[str]:
    """Names of the servers an operator retired that nothing has polled since
    (``monitoring.retire``): the pages leave them out unless asked."""
    rows = ServerState.objects.filter(retired_at__isnull=False).values_list(
        "server__name", "retired_at", "polled_at")
    return {name for name, retired, polled in rows
            if retired is not None and (polled is None or polled <= retired)}


#: a queue with nothing queued or running and no job for this long is idle
IDLE_AFTER = timedelta(hours=24)


def idle_queues(rows: Iterable[dict[str, Any]]) -> set[tuple[str, str]]:
    """(server name, function) of the ``queues()`` rows that are idle: nothing queued or
    running now, nothing finished in the last hour, and no rollup minute (a job
    submitted, completed or failed) in the last 24 h. The 24 h look is one index probe
    per candidate row (``rollup_key``), so its cost follows the number of queues, not
    the number of jobs."""
    candidates = [r for r in rows if not r["queued"] and not r["running"]
                  and not r["completed_1h"] and not r["failed_1h"]]
    if not candidates:
        return set()
    with connection.cursor() as cur:
        cur.execute(ACTIVE_SINCE_SQL, {
            "servers": [r["server"] for r in candidates],
            "functions": [r["function"] for r in candidates],
            "since": timezone.now() - IDLE_AFTER})
        active = set(cur.fetchall())
    return {(r["server"], r["function"]) for r in candidates} - active


class PollState(NamedTuple):
    """What the admin poller last wrote about one server (``services.record_poll``)."""

    server_id: int
    up: bool  # False once DOWN_AFTER polls in a row failed
    polled_at: datetime | None  # the last poll, answered or not
    last_answer: datetime | None  # the last poll gearmand answered (Server.last_seen)
    created_at: datetime  # when HQ first heard of the server


def poll_states() -> list[PollState]:
    """Every server the poller has tried at least once, with what it last found."""
    rows = ServerState.objects.values_list(
        "server_id", "up", "polled_at", "server__last_seen", "server__created_at")
    return [PollState(*row) for row in rows.order_by("server_id")]


def _sql(name: str) -> str:
    """A statement from ``sql/NAME.sql`` without its ``--`` comment lines: Django binds
    parameters on the client, so a placeholder left in a comment would put a value where
    a newline in it ends the comment and turns the rest into SQL."""
    text = (Path(__file__).with_name("sql") / f"{name}.sql").read_text()
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))


LATEST_SQL = _sql("latest_snapshots")
SPARK_SQL = _sql("sparklines")
OLDEST_SQL = _sql("oldest_queued")
RUNNING_SQL = _sql("running_since")
ROLLUP_COUNTS_SQL = _sql("rollup_counts")
ROLLUP_HIST_SQL = _sql("rollup_histograms")
ROLLUP_BANDS_SQL = _sql("rollup_bands")
DEPTH_SQL = _sql("depths")
ACTIVE_SINCE_SQL = _sql("active_since")
TIME_TO_COMPLETE_SQL = _sql("time_to_complete").replace("BUCKET_OF_MS",
                                                        histogram.sql_bucket("ms"))

Key = tuple[int, str]  # (server id, function)


def latest_snapshots(*, since: datetime, server: str | None = None
                     ) -> list[tuple[int, str, str, int, int, int, datetime]]:
    """gearmand's latest ``status`` per server and function polled since ``since``:
    (server id, server name, function, total, running, workers, at)."""
    with connection.cursor() as cur:
        cur.execute(LATEST_SQL, {"since": since, "server": server})
        return cur.fetchall()


def rollup_sums(*, since: datetime | None, until: datetime | None = None,
                server: str | None = None, functions: Iterable[str] | None = None
                ) -> dict[Key, dict[str, Any]]:
    """Rollup minutes in ``[since, until)`` added up per server and function: counts,
    and the runtime and wait histograms bucket by bucket. ``functions``: only those."""
    if functions is not None and since is not None and until is None:
        # a few queues: their minute rows added up here cost less than unnesting in SQL
        return rollup_windows([since], server=server, functions=functions)[since]
    args = {"since": since, "until": until, "server": server}
    out: dict[Key, dict[str, Any]] = {}
    with connection.cursor() as cur:
        cur.execute(ROLLUP_COUNTS_SQL, args)
        for sid, function, submitted, completed, failed in cur.fetchall():
            out[(sid, function)] = _sums(int(submitted or 0), int(completed or 0),
                                         int(failed or 0))
        cur.execute(ROLLUP_HIST_SQL, args)
        for sid, function, kind, index, count in cur.fetchall():
            agg = out.setdefault((sid, function), _sums(0, 0, 0))
            agg[kind][min(max(int(index), 0), histogram.SIZE - 1)] += int(count)
    return out


def rollup_windows(starts: Iterable[datetime], *, server: str | None = None,
                   functions: Iterable[str] | None = None
                   ) -> dict[datetime, dict[Key, dict[str, Any]]]:
    """:func:`rollup_sums` since each of ``starts`` (until now), all from one scan of the
    rollups since the oldest: the minutes are summed per band between two starts, and a
    window adds up its bands (counts and histograms both add). ``server``, ``functions``:
    only those."""
    edges = sorted(set(starts))
    if not edges:
        return {}
    bands: dict[int, dict[Key, dict[str, Any]]] = defaultdict(dict)
    with connection.cursor() as cur:
        cur.execute(ROLLUP_BANDS_SQL, {
            "starts": edges, "since": edges[0], "server": server,
            "functions": None if functions is None else sorted(functions)})
        rows = cur.fetchall()
    for sid, function, band, submitted, completed, failed, runtime, wait in rows:
        agg = bands[band].get((sid, function))
        if agg is None:
            agg = bands[band][(sid, function)] = _sums(0, 0, 0)
        agg["submitted"] += submitted
        agg["completed"] += completed
        agg["failed"] += failed
        _add_stored(agg["runtime"], runtime)
        _add_stored(agg["wait"], wait)
    out: dict[datetime, dict[Key, dict[str, Any]]] = {}
    total: dict[Key, dict[str, Any]] = {}
    for k in range(len(edges), 0, -1):  # newest band first: each window adds one band
        for key, agg in bands.get(k, {}).items():
            acc = total.setdefault(key, _sums(0, 0, 0))
            for name in ("submitted", "completed", "failed"):
                acc[name] += agg[name]
            histogram.add(acc["runtime"], agg["runtime"])
            histogram.add(acc["wait"], agg["wait"])
        out[edges[k - 1]] = {key: _copy(agg) for key, agg in total.items()}
    return out


def _add_stored(into: list[int], hist: object) -> None:
    """Add a histogram as a rollup row stores it (a JSON list of counts) into ``into``;
    what is not a list, or not a count, counts as empty (as in the SQL sums). Django
    hands ``jsonb`` over as its text."""
    if isinstance(hist, str | bytes):
        try:
            hist = json.loads(hist)
        except ValueError:
            return
    if not isinstance(hist, list) or not hist:
        return
    if len(hist) > histogram.SIZE:  # the last bucket holds everything beyond it
        hist = [*hist[:histogram.SIZE - 1], *[sum(x for x in hist[histogram.SIZE - 1:]
                                                  if type(x) is int)]]
    try:  # element by element in C (a list is converted whole before it is assigned)
        into[:len(hist)] = map(operator.add, into, hist)
    except TypeError:  # a value that is not a count: add the counts one by one
        for i, n in enumerate(hist):
            if type(n) is int:
                into[i] += n


def _copy(agg: dict[str, Any]) -> dict[str, Any]:
    return {**agg, "runtime": list(agg["runtime"]), "wait": list(agg["wait"])}


def _sums(submitted: int, completed: int, failed: int) -> dict[str, Any]:
    return {"submitted": submitted, "completed": completed, "failed": failed,
            "runtime": histogram.empty(), "wait": histogram.empty()}


def oldest_queued(*, server: str | None = None) -> dict[Key, datetime]:
    """When the oldest job still queued was submitted, per server and function."""
    with connection.cursor() as cur:
        cur.execute(OLDEST_SQL, {"server": server})
        return {(sid, function): at for sid, function, at in cur.fetchall()}


def running_since() -> dict[Key, datetime]:
    """When the longest-running job started, per server and function."""
    with connection.cursor() as cur:
        cur.execute(RUNNING_SQL)
        return {(sid, function): at for sid, function, at in cur.fetchall()}


def time_to_complete(*, windows: Iterable[int], until: datetime
                     ) -> dict[int, dict[Key, list[int]]]:
    """Histograms (``histogram``) of submit → finish in ms of the jobs that completed or
    failed in the ``windows`` (seconds) ending at ``until``: window → (server id,
    function) → histogram. Read from jobs (the rollups keep no such histogram), in one
    range scan of the ``finished_at`` index over the longest window."""
    spans = sorted({int(w) for w in windows if int(w) > 0})
    out: dict[int, dict[Key, list[int]]] = {w: {} for w in spans}
    if not spans:
        return out
    args: dict[str, datetime | list[int]] = {
        "since": until - timedelta(seconds=spans[-1]), "until": until, "windows": spans}
    with connection.cursor() as cur:
        cur.execute(TIME_TO_COMPLETE_SQL, args)
        for sid, function, window, index, count in cur.fetchall():
            hist = out[window].setdefault((sid, function), histogram.empty())
            hist[min(max(int(index), 0), histogram.SIZE - 1)] += int(count)
    return out


def queues(server: str | None = None, *, functions: Iterable[str] | None = None,
           sparklines: bool = True) -> list[dict[str, Any]]:
    """One row per server and function: gearmand's live counts plus the last hour.
    ``functions``: only those (the last hour is then read for them alone);
    ``sparklines=False`` leaves the depth history empty (one query less)."""
    now = timezone.now()
    only = None if functions is None else set(functions)
    rows: dict[Key, dict[str, Any]] = {}
    names = dict(Server.objects.values_list("id", "name"))
    for sid, sname, function, total, running, workers, _at in latest_snapshots(
            since=now - FRESH, server=server):
        if only is None or function in only:
            rows[(sid, function)] = _queue_row(sname, function, max(total - running, 0),
                                               running, workers)
    hour = rollup_sums(since=minute_of(now - timedelta(hours=1)), server=server,
                       functions=only)
    for key, agg in hour.items():
        row = rows.get(key)
        if row is None:  # seen in jobs, not listed by gearmand now (server down, or idle)
            row = rows[key] = _queue_row(names.get(key[0], "?"), key[1], None, None, None)
        _add_hour(row, agg)
    for key, oldest in oldest_queued(server=server).items():
        row = rows.get(key)
        if row is not None and row["queued"]:
            row["oldest_queued_age_s"] = round((now - oldest).total_seconds(), 1)
    if sparklines:
        _add_sparklines(rows, server, now)
    for row in rows.values():
        row["backed_up"] = bool(row["queued"]) and (
            not row["workers"] or (row["oldest_queued_age_s"] or 0) > 60)
    return sorted(rows.values(), key=lambda r: (r["server"], r["function"]))


def queue_depths(server: str | None = None) -> dict[str, int]:
    """Jobs queued now per function (the deepest server's count when several have it)
    for every queue :func:`queues` lists: gearmand's latest status, and 0 for a queue
    known only from the last hour's rollups. Cheap: no histogram is read."""
    now = timezone.now()
    out: dict[str, int] = {}
    for _sid, _name, function, total, running, _w, _at in latest_snapshots(
            since=now - FRESH, server=server):
        out[function] = max(out.get(function, 0), max(total - running, 0))
    args = {"since": minute_of(now - timedelta(hours=1)), "until": None, "server": server}
    with connection.cursor() as cur:
        cur.execute(ROLLUP_COUNTS_SQL, args)
        for _sid, function, *_counts in cur.fetchall():
            out.setdefault(function, 0)
    return out


def minute_of(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def _queue_row(server: str, function: str, queued: int | None, running: int | None,
               workers: int | None) -> dict[str, Any]:
    return {"server": server, "function": function, "queued": queued, "running": running,
            "workers": workers, "oldest_queued_age_s": None, "completed_1h": 0,
            "failed_1h": 0, "failure_rate_1h": None, "runtime_p50_ms": None,
            "runtime_p95_ms": None, "wait_p95_ms": None, "sparkline": []}


def _add_hour(row: dict[str, Any], agg: dict[str, Any]) -> None:
    done = agg["completed"] + agg["failed"]
    row["completed_1h"], row["failed_1h"] = agg["completed"], agg["failed"]
    row["failure_rate_1h"] = agg["failed"] / done if done else None
    row["runtime_p50_ms"] = histogram.percentile(agg["runtime"], 50)
    row["runtime_p95_ms"] = histogram.percentile(agg["runtime"], 95)
    row["wait_p95_ms"] = histogram.percentile(agg["wait"], 95)


def _add_sparklines(rows: dict[Key, dict[str, Any]], server: str | None,
                    now: datetime) -> None:
    args = {"since": now - timedelta(minutes=30), "server": server, "points": SPARK_POINTS}
    with connection.cursor() as cur:
        cur.execute(SPARK_SQL, args)
        for sid, function, depth in cur.fetchall():
            row = rows.get((sid, function))
            if row is not None:
                row["sparkline"].append(max(depth, 0))


def _key(name: str, server: str | None) -> str:
    """A cache key for a selector's answer about ``server`` (any text: hashed)."""
    if server is None:
        return name
    return f"{name}:{hashlib.sha256(server.encode()).hexdigest()[:32]}"


def shared_queues(server: str | None = None) -> list[dict[str, Any]]:
    """:func:`queues`, computed once per ``HQ_SHARED_CACHE_S`` for every web process."""
    return shared(_key("queues", server), lambda: queues(server))


def shared_workers(server: str | None = None) -> list[dict[str, Any]]:
    """:func:`workers`, computed once per ``HQ_SHARED_CACHE_S`` for every web process."""
    return shared(_key("workers", server or None), lambda: workers(server))


def shared_taps_health() -> dict[str, TapHealth]:
    """Every tap's health (``monitoring.taps``), read from Redis once per
    ``HQ_SHARED_CACHE_S``. Raises ``redis.RedisError`` when Redis does not answer."""
    return shared("taps", taps.taps_health)


def parse_range(range_name: str | None, step: str | None) -> tuple[int, int]:
    """``range`` (15m, 1h, 6h, 24h, 7d) and ``step`` (seconds) → (range_s, step_s)."""
    name = range_name or "1h"
    if name not in RANGES:
        raise InvalidInput(f"unknown range {name!r}",
                           fields={"range": [f"Choose from: {', '.join(RANGES)}."]})
    range_s, step_s = RANGES[name]
    if step:
        try:
            step_s = int(step)
        except ValueError:
            raise InvalidInput("step must be a whole number of seconds",
                               fields={"step": ["A whole number of seconds, e.g. 60."]}) from None
        if step_s < 60 or step_s % 60:
            raise InvalidInput("step must be a multiple of 60 seconds",
                               fields={"step": ["60, 120, 300, …"]})
        if range_s // step_s > 2000:
            raise InvalidInput("too many points: use a larger step",
                               fields={"step": ["At most 2000 points per range."]})
    return range_s, step_s


def queue_stats(function: str, range_s: int, step_s: int,
                server: str | None = None) -> dict[str, Any]:
    now = timezone.now()
    start_epoch = (int(now.timestamp()) - range_s) // step_s * step_s
    start = datetime.fromtimestamp(start_epoch, tz=now.tzinfo)
    buckets: dict[int, dict[str, Any]] = defaultdict(
        lambda: {"submitted": 0, "completed": 0, "failed": 0,
                 "runtime": histogram.empty(), "wait": histogram.empty()})
    qs = Rollup.objects.filter(function=function, minute__gte=start)
    if server:
        qs = qs.filter(server__name=server)
    for minute, sub, comp, fail, rt, wt in qs.values_list(
            "minute", "submitted", "completed", "failed", "runtime_hist", "wait_hist"):
        acc = buckets[int(minute.timestamp()) // step_s * step_s]
        acc["submitted"] += sub
        acc["completed"] += comp
        acc["failed"] += fail
        histogram.add(acc["runtime"], rt)
        histogram.add(acc["wait"], wt)
    depth = _depths(function, start, step_s, server)
    points = []
    for t in range(start_epoch, int(now.timestamp()) + 1, step_s):
        b = buckets.get(t)
        done = (b["completed"] + b["failed"]) if b else 0
        points.append({
            "t": datetime.fromtimestamp(t, tz=now.tzinfo).isoformat().replace("+00:00", "Z"),
            "submitted": b["submitted"] if b else 0,
            "completed": b["completed"] if b else 0,
            "failed": b["failed"] if b else 0,
            "failure_rate": (b["failed"] / done) if b and done else None,
            "runtime_p50_ms": histogram.percentile(b["runtime"], 50) if b else None,
            "runtime_p95_ms": histogram.percentile(b["runtime"], 95) if b else None,
            "runtime_p99_ms": histogram.percentile(b["runtime"], 99) if b else None,
            "wait_p95_ms": histogram.percentile(b["wait"], 95) if b else None,
            "queue_depth": depth.get(t),
        })
    return {"function": function, "step": step_s, "points": points}


def _depths(function: str, start: datetime, step_s: int, server: str | None) -> dict[int, int]:
    args: dict[str, int | str | datetime | None] = {
        "step": step_s, "function": function, "since": start, "server": server}
    with connection.cursor() as cur:
        cur.execute(DEPTH_SQL, args)
        return {int(t.timestamp()): max(d, 0) for t, d in cur.fetchall()}


def workers(server: str | None = None) -> list[dict[str, Any]]:
    qs = Worker.objects.select_related("server").order_by("server__name", "client_id",
                                                          "address", "fd")
    if server:
        qs = qs.filter(server__name=server)
    rows = list(qs)
    running = _running_jobs({w.server_id for w in rows})
    counts = _finished_counts(rows)
    now = timezone.now()
    out = []
    for w in rows:
        job = _current_job(w, running)
        done = counts.get((w.server_id, w.client_id or w.address), {})
        out.append({
            "id": w.id, "server": w.server.name, "client_id": w.client_id,
            "address": w.address, "functions": w.functions,
            "current_job": None if job is None else {
                "id": job.id, "handle": job.handle, "function": job.function,
                "running_s": round((now - job.started_at).total_seconds(), 1)
                if job.started_at else None},
            "connected_at": w.connected_at, "last_seen": w.last_seen,
            "jobs_completed": done.get("completed", 0), "jobs_failed": done.get("failed", 0),
        })
    return out


def _running_jobs(server_ids: set[int]) -> list[Job]:
    if not server_ids:
        return []
    return list(Job.objects.filter(state="running", server_id__in=server_ids)
                .only("id", "handle", "function", "worker", "started_at", "server_id"))


def _current_job(w: Worker, running: list[Job]) -> Job | None:
    """The job this worker runs now. Jobs name their worker by client id, else by peer
    address (ip:port); gearmand's ``workers`` lists only the ip, so without a client id
    the match is by ip among the worker's functions (by ip:port for a row from the traffic)."""
    for job in running:
        if job.server_id != w.server_id or job.function not in w.functions:
            continue
        if w.client_id and job.worker == w.client_id:
            return job
        if not w.client_id and w.address in (job.worker, job.worker.rpartition(":")[0]):
            return job
    return None


def _finished_counts(rows: list[Worker]) -> dict[tuple[int, str], dict[str, int]]:
    names = {w.client_id for w in rows if w.client_id}
    if not names:
        return {}
    since = min(w.connected_at for w in rows)
    out: dict[tuple[int, str], dict[str, int]] = defaultdict(dict)
    qs = (Job.objects.filter(worker__in=names, finished_at__gte=since,
                             state__in=["completed", "failed"])
          .values_list("server_id", "worker", "state").annotate(n=Count("id")))
    for sid, worker, state, n in qs:
        out[(sid, worker)][state] = n
    return out


def recent_failures(function: str, limit: int = 20) -> list[Job]:
    return list(Job.objects.filter(function=function, state="failed")
                .select_related("server").order_by("-id")[:limit])
