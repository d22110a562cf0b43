"""Writes for monitoring: what a poll of gearmand's admin protocol found, and rollups.

The tap process polls its gearmand every ``HQ_POLL_INTERVAL`` seconds (``hq/tap/runner.py``)
and calls :func:`record_poll` / :func:`record_poll_failure`. A Celery beat task calls
:func:`refresh_rollups` for the last few minutes, so late events are folded in too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from broker.admin import FunctionStatus, WorkerLine

from . import histogram
from .models import QueueSnapshot, Rollup, Server, ServerState, Worker

log = logging.getLogger(__name__)

#: a server is "down" after this many failed polls in a row
DOWN_AFTER = 2


def _server(name: str, address: str) -> Server:
    server, _ = Server.objects.get_or_create(name=name, defaults={"address": address})
    if address and server.address != address:
        Server.objects.filter(pk=server.pk).update(address=address)
    return server


@transaction.atomic
def record_poll(
    *, name: str, address: str, pid: str, version: str,
    statuses: Sequence[FunctionStatus], workers: Sequence[WorkerLine],
    at: datetime | None = None,
) -> Server:
    at = at or timezone.now()
    server = _server(name, address)
    state, _ = ServerState.objects.select_for_update().get_or_create(server=server)
    if state.pid != pid:
        state.started_at = at
    state.up, state.version, state.pid, state.polled_at = True, version, pid, at
    state.failed_polls, state.down_since, state.last_error = 0, None, ""
    state.save()
    Server.objects.filter(pk=server.pk).update(last_seen=at)
    QueueSnapshot.objects.bulk_create([
        QueueSnapshot(server=server, function=s.function, at=at, total=s.total,
                      running=s.running, workers=s.workers) for s in statuses
    ])
    _sync_workers(server, workers, at)
    return server


def _sync_workers(server: Server, lines: Sequence[WorkerLine], at: datetime) -> None:
    """Make the Worker rows of ``server`` match gearmand's ``workers`` list. Connections
    that have no functions are clients (or admin connections like ours): skipped."""
    seen = {(w.fd, w.address, w.client_id): w for w in lines if w.functions}
    existing = {(w.fd, w.address, w.client_id): w for w in server.workers.all()}
    gone = [w.pk for key, w in existing.items() if key not in seen]
    if gone:
        Worker.objects.filter(pk__in=gone).delete()
    for key, line in seen.items():
        row = existing.get(key)
        if row is None:
            Worker.objects.create(server=server, fd=line.fd, address=line.address,
                                  client_id=line.client_id, functions=list(line.functions),
                                  connected_at=at, last_seen=at)
        else:
            Worker.objects.filter(pk=row.pk).update(functions=list(line.functions),
                                                   last_seen=at)


@transaction.atomic
def record_poll_failure(*, name: str, address: str, error: str,
                        at: datetime | None = None) -> ServerState:
    at = at or timezone.now()
    server = _server(name, address)
    state, _ = ServerState.objects.select_for_update().get_or_create(server=server)
    state.failed_polls += 1
    state.last_error = error[:500]
    state.polled_at = at
    if state.failed_polls >= DOWN_AFTER and state.up:
        state.up = False
        state.down_since = at
        log.warning("gearmand %s (%s) is down: %s", name, address, error)
    if state.failed_polls >= DOWN_AFTER:
        # its workers are gone with it; the next successful poll lists them again
        Worker.objects.filter(server=server).delete()
    state.save()
    return state


ROLLUP_QUERIES = {
    "finished": """
        SELECT server_id, function, date_trunc('minute', finished_at),
               count(*) FILTER (WHERE state = 'completed'),
               count(*) FILTER (WHERE state = 'failed')
        FROM jobs_job
        WHERE finished_at >= %s AND finished_at < %s AND state IN ('completed', 'failed')
        GROUP BY 1, 2, 3""",
    "submitted": """
        SELECT server_id, function, date_trunc('minute', submitted_at), count(*)
        FROM jobs_job WHERE submitted_at >= %s AND submitted_at < %s
        GROUP BY 1, 2, 3""",
    "runtime": f"""
        SELECT server_id, function, date_trunc('minute', finished_at),
               {histogram.sql_bucket('runtime_ms')}, count(*)
        FROM jobs_job
        WHERE finished_at >= %s AND finished_at < %s AND state IN ('completed', 'failed')
          AND runtime_ms IS NOT NULL
        GROUP BY 1, 2, 3, 4""",
    "wait": f"""
        SELECT server_id, function, date_trunc('minute', started_at),
               {histogram.sql_bucket('wait_ms')}, count(*)
        FROM jobs_job
        WHERE started_at >= %s AND started_at < %s AND wait_ms IS NOT NULL
        GROUP BY 1, 2, 3, 4""",
}


def refresh_rollups(*, since: datetime, until: datetime | None = None) -> int:
    """Recompute the rollup rows of every whole minute in [since, until) from jobs.

    Idempotent: each minute's row is overwritten with what the jobs say now, so running
    it again (or for an overlapping range) never double-counts. Returns rows written.
    """
    until = until or timezone.now() + timedelta(minutes=1)
    since = since.replace(second=0, microsecond=0)
    rows: dict[tuple[int, str, datetime], Rollup] = {}

    def row(key: tuple[int, str, datetime]) -> Rollup:
        r = rows.get(key)
        if r is None:
            r = rows[key] = Rollup(server_id=key[0], function=key[1], minute=key[2],
                                   runtime_hist=histogram.empty(), wait_hist=histogram.empty())
        return r

    with connection.cursor() as cur:
        cur.execute(ROLLUP_QUERIES["finished"], [since, until])
        for server_id, function, minute, completed, failed in cur.fetchall():
            r = row((server_id, function, minute))
            r.completed, r.failed = completed, failed
        cur.execute(ROLLUP_QUERIES["submitted"], [since, until])
        for server_id, function, minute, submitted in cur.fetchall():
            row((server_id, function, minute)).submitted = submitted
        for name, attr in (("runtime", "runtime_hist"), ("wait", "wait_hist")):
            cur.execute(ROLLUP_QUERIES[name], [since, until])
            for server_id, function, minute, bucket, count in cur.fetchall():
                getattr(row((server_id, function, minute)), attr)[bucket] = count
    for r in rows.values():  # keep the stored lists short: drop empty tail buckets
        r.runtime_hist = _trim(r.runtime_hist)
        r.wait_hist = _trim(r.wait_hist)
    Rollup.objects.bulk_create(
        list(rows.values()), batch_size=1000, update_conflicts=True,
        unique_fields=["server", "function", "minute"],
        update_fields=["submitted", "completed", "failed", "runtime_hist", "wait_hist"],
    )
    return len(rows)


def _trim(hist: list[int]) -> list[int]:
    end = len(hist)
    while end and not hist[end - 1]:
        end -= 1
    return hist[:end]


def prune_snapshots(*, older_than: timedelta = timedelta(days=8)) -> int:
    deleted, _ = QueueSnapshot.objects.filter(at__lt=timezone.now() - older_than).delete()
    return deleted
