"""The scheduler: every second (Celery beat, ``jobs.tasks.submit_due_jobs``) it submits
the jobs HQ holds whose time came, most overdue first, and links HQ's submits to the rows
their taps wrote (``jobs/services.py`` explains both).

Due jobs are claimed :data:`BATCH` at a time with ``SELECT … FOR UPDATE SKIP LOCKED`` and
submitted in one transaction per batch, the pattern of the alert outbox
(``alerts/delivery.py``) but holding the row locks instead of leasing them: two
schedulers never take the same job, and a scheduler that dies mid-batch releases its
locks with its connection, so the batch is simply still due; its jobs that gearmand had
already acknowledged are submitted again and, by the unique key every scheduled job
carries, coalesce with the job gearmand holds. The submits reuse pooled gearmand
connections (``broker.client.POOL``); the batch's rows and audit rows are written with one
statement each. A job whose time passed while HQ was down is due at the first tick after
HQ comes back; its page then says how late it was submitted (``Job.late_by``).

Beat runs the task once a second; so that a job is not up to a second late, the task
keeps looking for newly due jobs every :data:`POLL_S` until the next beat is due
(``follow_s``), and bulk work is done in short slices with due jobs submitted between them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Exists, OuterRef
from django.db.models.functions import Coalesce
from django.utils import timezone

from broker.client import ServerAddress
from hq import audit
from hq.errors import Unavailable

from . import bulk, services
from .fold import payload_bytes
from .models import Job, Server, State
from .schedules.ticks import fire_one_due

log = logging.getLogger(__name__)

#: one tick submits at most this many jobs, for at most this long (the rest at the next)
TICK_MAX_JOBS = 20_000
TICK_MAX_S = 10.0
#: due jobs claimed and submitted per transaction
BATCH = 200
#: between beats, how often the task looks for newly due jobs
POLL_S = 0.1
#: bulk work is done in slices this long, due jobs submitted between them
BULK_SLICE_S = 0.5


@dataclass
class Batch:
    """What one batch did: the jobs submitted, and why it stopped early (no gearmand)."""

    jobs: list[Job]
    gearmand_down: str = ""


def submit_batch_due(*, now: datetime, limit: int = BATCH) -> Batch:
    """Claim up to ``limit`` of the most overdue jobs HQ holds (``FOR UPDATE SKIP
    LOCKED``: another scheduler takes others) and submit them, in one transaction. The
    locks are held while gearmand is asked (bounded by the client's timeouts). When no
    gearmand accepts a job, the jobs submitted before it are recorded and the rest stay
    scheduled (``gearmand_down`` says why)."""
    with transaction.atomic():
        claimed = list(Job.objects.select_for_update(skip_locked=True)
                       .filter(boot__isnull=True, handle="", state=State.SCHEDULED,
                               scheduled_for__lte=now)
                       .order_by("scheduled_for", "id")[:limit])
        sent: list[Job] = []
        down = ""
        servers: dict[ServerAddress, Server] = {}
        for job in claimed:
            data = payload_bytes(job.payload)
            try:
                conn, handle = services.send(job.function, data, unique=job.unique,
                                             priority=job.priority or "normal",
                                             background=True)
            except Unavailable as exc:  # every gearmand refused: the rest stay due
                down = exc.message
                break
            conn.close()  # back to the pool
            if conn.server not in servers:
                servers[conn.server] = services.server_row(conn.server)
            job.server = servers[conn.server]
            job.handle, job.state, job.clients = handle, State.QUEUED, 1
            job.submitted_at = job.updated_at = timezone.now()
            sent.append(job)
        if sent:
            _record_submitted(sent)
            audit.record_many(user=None, via="system", action="submit_scheduled",
                              rows=[(f"job {job.pk}", _submitted(job)) for job in sent])
    return Batch(sent, down)


def _record_submitted(jobs: list[Job]) -> None:
    """Write the batch's handles, servers and submit times with one statement (Django's
    ``bulk_update`` builds a CASE per column and row: 5 ms a job)."""
    table = Job._meta.db_table
    with connection.cursor() as cur:
        cur.execute(
            f'UPDATE "{table}" AS j SET server_id = v.server_id, handle = v.handle, '
            "state = %s, clients = 1, submitted_at = v.at, updated_at = v.at "
            "FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::timestamptz[]) "
            "AS v(id, server_id, handle, at) WHERE j.id = v.id",
            [State.QUEUED, [j.pk for j in jobs], [j.server_id for j in jobs],
             [j.handle for j in jobs], [j.submitted_at for j in jobs]])


def _submitted(job: Job) -> dict[str, Any]:
    """The audit detail of one scheduled submit."""
    late = job.late_by or timedelta(0)
    return {"result": "ok", "handle": job.handle, "server": job.server.name,
            "late_s": round(late.total_seconds(), 3)}


def submit_one_due(*, now: datetime) -> Job | None:
    """Claim and submit the most overdue job (a batch of one); None when nothing is due.
    Unavailable (503) when no gearmand accepts it, and the job stays scheduled."""
    batch = submit_batch_due(now=now, limit=1)
    if batch.gearmand_down:
        raise Unavailable(batch.gearmand_down)
    return batch.jobs[0] if batch.jobs else None


@dataclass
class Tick:
    submitted: int = 0
    linked: int = 0
    schedule_runs: int = 0
    schedule_skips: int = 0
    bulk: int = 0
    gearmand_down: str = ""

    def summary(self) -> str:
        down = f"; not submitted: {self.gearmand_down}" if self.gearmand_down else ""
        runs = (f", schedules run {self.schedule_runs}, skipped {self.schedule_skips}"
                if self.schedule_runs or self.schedule_skips else "")
        more = f", bulk {self.bulk}" if self.bulk else ""
        return f"submitted {self.submitted}, linked {self.linked}{runs}{more}{down}"


def submit_due(*, now: datetime | None = None, max_jobs: int = TICK_MAX_JOBS,
               max_s: float = TICK_MAX_S, follow_s: float = 0.0) -> Tick:
    """Submit what is due at ``now`` (default: the clock, read again before each batch),
    fire the recurring schedules due, work on bulk actions, then link waiting submits
    (:func:`link_waiting`).
    ``follow_s`` (only with the clock): go on submitting jobs as they fall due for that
    long after the tick began, looking every :data:`POLL_S`."""
    fixed = now

    def clock() -> datetime:
        return fixed or timezone.now()

    tick = Tick()
    began = time.monotonic()
    stop_at = began + max_s
    _submit_batches(tick, clock, max_jobs, stop_at)
    if not tick.gearmand_down:
        _fire_schedules(tick, clock(), stop_at)
    while not tick.gearmand_down and time.monotonic() < stop_at:
        left = stop_at - time.monotonic()
        moved = bulk.advance(max_s=max(min(left, BULK_SLICE_S), 0.05))
        tick.bulk += moved
        _submit_batches(tick, clock, max_jobs, stop_at)
        if not moved:
            break
    tick.linked = link_waiting()
    follow_until = min(began + follow_s, stop_at) if fixed is None else 0.0
    while not tick.gearmand_down and time.monotonic() + POLL_S < follow_until:
        before = tick.submitted + tick.schedule_runs + tick.schedule_skips
        _submit_batches(tick, clock, max_jobs, follow_until)
        if not tick.gearmand_down:
            _fire_schedules(tick, clock(), follow_until)
        if tick.submitted + tick.schedule_runs + tick.schedule_skips == before:
            time.sleep(POLL_S)
    return tick


def link_waiting(*, now: datetime | None = None, limit: int = 200) -> int:
    """Link HQ's submits whose tap row has appeared (``services.link_submitted``, each in
    its own transaction); how many were linked. One query finds which of the submits
    still waiting (the newest ``limit``) have a candidate tap row, so the tick does not
    lock and search for each of them every second while the tap is behind or absent."""
    now = now or timezone.now()
    since = Coalesce(OuterRef("submitted_at"), OuterRef("updated_at")) - services.LINK_WINDOW
    tap_row = Job.objects.filter(server_id=OuterRef("server_id"), handle=OuterRef("handle"),
                                 boot__isnull=False, updated_at__gte=since)
    ids = list(Job.objects.filter(boot__isnull=True,
                                  submitted_at__gte=now - services.LINK_GIVE_UP)
               .exclude(handle="").filter(Exists(tap_row))
               .order_by("-id").values_list("id", flat=True)[:limit])
    linked = 0
    for job_id in ids:
        if services.link_submitted(job_id=job_id).boot_id is not None:
            linked += 1
    return linked


def _submit_batches(tick: Tick, clock: Callable[[], datetime], max_jobs: int,
                    stop_at: float) -> None:
    """Batches of due jobs until none is due, ``max_jobs`` or ``stop_at``."""
    while tick.submitted < max_jobs and time.monotonic() < stop_at:
        batch = submit_batch_due(now=clock(), limit=min(BATCH, max_jobs - tick.submitted))
        tick.submitted += len(batch.jobs)
        if batch.gearmand_down:
            tick.gearmand_down = batch.gearmand_down
            log.warning("scheduled jobs wait: %s", batch.gearmand_down)
            return
        if len(batch.jobs) < BATCH:
            return


def _fire_schedules(tick: Tick, now: datetime, stop_at: float) -> None:
    """Every recurring schedule whose tick came (``jobs/schedules/ticks.py``)."""
    while time.monotonic() < stop_at:
        try:
            run = fire_one_due(now=now)
        except Unavailable as exc:
            tick.gearmand_down = exc.message
            log.warning("recurring schedules wait: %s", exc.message)
            return
        if run is None:
            return
        if run.skipped:
            tick.schedule_skips += 1
        else:
            tick.schedule_runs += 1
