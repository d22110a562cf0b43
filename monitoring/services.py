"""Writes for monitoring: what a poll of gearmand's admin protocol found, and rollups.

The tap process polls its gearmand every ``HQ_POLL_INTERVAL`` seconds (``hq/tap/runner.py``)
and calls :func:`record_poll` / :func:`record_poll_failure`. Worker rows follow the traffic
(:func:`apply_worker_facts`, within a second of a CAN_DO or a disconnect) and each poll's
``workers`` list reconciles them (:func:`reconcile_workers`). A Celery beat task calls
:func:`refresh_rollups` for the last few minutes, so late events are folded in too.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from broker.admin import FunctionStatus, WorkerLine
from broker.workers import WorkerFact

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
    statuses: Sequence[FunctionStatus], workers: Sequence[WorkerLine] | None,
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
    if workers is not None:  # None: the tap reconciles them with the traffic's
        reconcile_workers(server, workers, at)
    return server


#: ``fd`` of a worker row known from the traffic (gearmand's fd is not on the wire); its
#: ``address`` is then the worker's ``ip:port``, the name its jobs are recorded under
WIRE_FD = -1

#: what the admin list and the traffic have in common for one worker connection
Signature = tuple[str, frozenset[str]]


def signature(client_id: str, functions: Iterable[str]) -> Signature:
    return client_id, frozenset(functions)


@dataclass
class WorkerChanges:
    """What :func:`apply_worker_facts` changed: functions (for the live stream) and the
    signatures of the rows it created, changed or deleted (for :func:`reconcile_workers`)."""

    functions: set[str] = field(default_factory=set)
    signatures: set[Signature] = field(default_factory=set)


@transaction.atomic
def apply_worker_facts(*, name: str, address: str,
                       facts: Sequence[WorkerFact]) -> WorkerChanges:
    """Worker rows from the traffic (``broker/workers.py``): one row per worker connection,
    keyed by its ``ip:port``, created at its first CAN_DO, updated on every change, deleted
    when it drops its last function or goes away. ``facts``: the latest per peer."""
    server = _server(name, address)
    rows = {w.address: w for w in Worker.objects.select_for_update().filter(
        server=server, fd=WIRE_FD, address__in=[f.peer for f in facts])}
    out = WorkerChanges()
    for fact in facts:
        at = datetime.fromtimestamp(fact.ts, UTC)
        row = rows.get(fact.peer)
        if row is not None:
            out.functions.update(row.functions)
            out.signatures.add(signature(row.client_id, row.functions))
        if fact.functions:
            out.functions.update(fact.functions)
            out.signatures.add(signature(fact.client_id, fact.functions))
        if fact.gone or not fact.functions:
            if row is not None:
                row.delete()
        elif row is None:
            Worker.objects.create(server=server, fd=WIRE_FD, address=fact.peer,
                                  client_id=fact.client_id, functions=list(fact.functions),
                                  connected_at=at, last_seen=at)
        else:
            Worker.objects.filter(pk=row.pk).update(
                client_id=fact.client_id, functions=list(fact.functions), last_seen=at)
    return out


@transaction.atomic
def reconcile_polled_workers(*, name: str, address: str, lines: Sequence[WorkerLine],
                             at: datetime, unsettled: Collection[Signature]) -> None:
    """The tap's reconciliation of its traffic-made worker rows (see below)."""
    reconcile_workers(_server(name, address), lines, at, unsettled)


def reconcile_workers(server: Server, lines: Sequence[WorkerLine], at: datetime,
                      unsettled: Collection[Signature] = ()) -> None:
    """Make the Worker rows of ``server`` match gearmand's ``workers`` list, taken at
    ``at``. Connections that have no functions are clients (or admin connections like
    ours): skipped.

    A listed worker that a row from the traffic explains (same client id and functions,
    the same host preferred) keeps that row; the other listed workers get rows of their own
    (workers HQ did not see connect). A traffic row gearmand does not list is deleted: its
    end was missed. ``unsettled``: signatures the traffic changed since shortly before the
    list was taken; the list may be older than the traffic there, so neither side of such a
    worker is touched this time."""
    wire: dict[Signature, list[Worker]] = defaultdict(list)
    polled: dict[tuple[int, str, str], Worker] = {}
    for row in server.workers.all():
        if row.fd == WIRE_FD:
            wire[signature(row.client_id, row.functions)].append(row)
        else:
            polled[(row.fd, row.address, row.client_id)] = row
    seen: dict[tuple[int, str, str], WorkerLine] = {}
    explained: list[int] = []
    for line in lines:
        if not line.functions:
            continue
        sig = signature(line.client_id, line.functions)
        candidates = wire.get(sig)
        if candidates:
            same_host = [r for r in candidates if r.address.rpartition(":")[0] == line.address]
            match = (same_host or candidates)[0]
            candidates.remove(match)
            explained.append(match.pk)
        elif sig not in unsettled:
            seen[(line.fd, line.address, line.client_id)] = line
    if explained:
        Worker.objects.filter(pk__in=explained).update(last_seen=at)
    gone = [r.pk for sig, rows in wire.items() if sig not in unsettled for r in rows]
    gone += [w.pk for key, w in polled.items()
             if key not in seen and signature(w.client_id, w.functions) not in unsettled]
    if gone:
        Worker.objects.filter(pk__in=gone).delete()
    for key, line in seen.items():
        known = polled.get(key)
        if known is None:
            Worker.objects.create(server=server, fd=line.fd, address=line.address,
                                  client_id=line.client_id, functions=list(line.functions),
                                  connected_at=at, last_seen=at)
        else:
            Worker.objects.filter(pk=known.pk).update(functions=list(line.functions),
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
        # its workers are gone with it; the next successful poll lists them again (rows
        # from the traffic go with their connections: an admin poll that times out while
        # gearmand still serves must not drop workers the tap sees working)
        Worker.objects.filter(server=server).exclude(fd=WIRE_FD).delete()
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
