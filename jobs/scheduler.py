"""The scheduler: every second (Celery beat, ``jobs.tasks.submit_due_jobs``) it submits
the jobs HQ holds whose time came, most overdue first, and links HQ's submits to the rows
their taps wrote (``jobs/services.py`` explains both).

Each due job is claimed with ``SELECT … FOR UPDATE SKIP LOCKED`` and submitted in its own
transaction, the pattern of the alert outbox (``alerts/delivery.py``) but holding the row
lock instead of leasing it: two schedulers never take the same job, and a scheduler that
dies mid-submit releases its lock with its connection, so the job is simply still due. A
job whose time passed while HQ was down is due at the first tick after HQ comes back; its
page then says how late it was submitted (``Job.late_by``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from hq import audit
from hq.errors import Unavailable

from . import bulk, services
from .models import Job, State
from .schedules.ticks import fire_one_due

log = logging.getLogger(__name__)

#: one tick submits at most this many jobs, for at most this long (the rest at the next)
TICK_MAX_JOBS = 2000
TICK_MAX_S = 10.0


def submit_one_due(*, now: datetime) -> Job | None:
    """Claim the most overdue job HQ holds (``FOR UPDATE SKIP LOCKED``: another scheduler
    takes another) and submit it, in one transaction; None when nothing is due. The lock is
    held while gearmand is asked (bounded by the client's timeouts), so the job is
    submitted by one scheduler only; Unavailable (503) when no gearmand accepts it, and
    the job stays scheduled."""
    with transaction.atomic():
        job = (Job.objects.select_for_update(skip_locked=True)
               .filter(boot__isnull=True, handle="", state=State.SCHEDULED,
                       scheduled_for__lte=now)
               .order_by("scheduled_for", "id").first())
        if job is None:
            return None
        payload = job.payload
        data = payload.encode() if isinstance(payload, str) else (payload or b"")
        conn, handle = services.send(job.function, data, unique=job.unique,
                                     priority=job.priority or "normal", background=True)
        try:
            job.server = services.server_row(conn.server)
            job.handle, job.state, job.clients = handle, State.QUEUED, 1
            job.submitted_at = job.updated_at = timezone.now()
            job.save(update_fields=["server", "handle", "state", "clients", "submitted_at",
                                    "updated_at"])
            late = job.late_by or timedelta(0)
            audit.record(user=None, via="system", action="submit_scheduled",
                         target=f"job {job.pk}",
                         detail={"result": "ok", "handle": handle, "server": conn.server.name,
                                 "late_s": round(late.total_seconds(), 3)})
        finally:
            conn.close()
    return job


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
               max_s: float = TICK_MAX_S) -> Tick:
    """Submit what is due at ``now`` (default: the clock), then link waiting submits."""
    now = now or timezone.now()
    tick = Tick()
    stop_at = time.monotonic() + max_s
    while tick.submitted < max_jobs and time.monotonic() < stop_at:
        try:
            job = submit_one_due(now=now)
        except Unavailable as exc:  # every gearmand refused: the jobs stay due
            tick.gearmand_down = exc.message
            log.warning("scheduled jobs wait: %s", exc.message)
            break
        if job is None:
            break
        tick.submitted += 1
    if not tick.gearmand_down:
        _fire_schedules(tick, now, stop_at)
    if not tick.gearmand_down:
        tick.bulk = bulk.advance(max_s=max(stop_at - time.monotonic(), 0.5))
    tick.linked = services.link_pending()
    return tick


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
