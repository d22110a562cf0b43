"""A schedule's tick: claimed with ``SELECT … FOR UPDATE SKIP LOCKED`` by the scheduler
(``jobs/scheduler.py``, every second), acted on once, in one transaction: the job is
submitted (or the tick skipped, ``overlap: skip``), the tick recorded in ``ScheduleRun``
(unique per schedule and tick) and ``next_run_at`` moved to the next tick after now.

Ticks missed while HQ was down are made up by *one* run, at the first tick after HQ is
back (as anacron does), not one per missed tick. When no gearmand accepts the job the
transaction rolls back and the schedule stays due: the tick is tried again next second.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.db import transaction
from django.utils import timezone

from hq import audit

from .. import services
from ..fold import payload_bytes
from ..models import Job, Schedule, ScheduleRun, State
from .services import next_tick

OPEN = (State.SCHEDULED, State.QUEUED, State.RUNNING)


def fire_one_due(*, now: datetime) -> ScheduleRun | None:
    """Act on the most overdue schedule's tick; None when no schedule is due."""
    with transaction.atomic():
        schedule = (Schedule.objects.select_for_update(skip_locked=True)
                    .filter(enabled=True, next_run_at__lte=now)
                    .order_by("next_run_at", "id").first())
        if schedule is None:
            return None
        tick = schedule.next_run_at
        assert tick is not None
        skipped = _overlap(schedule)
        job = None
        if not skipped:
            job = _submit(schedule, tick, now)
            schedule.last_job = job
        run = ScheduleRun.objects.create(schedule=schedule, tick=tick, at=timezone.now(),
                                         job=job, skipped=skipped)
        schedule.last_run_at = tick
        schedule.next_run_at = next_tick(schedule, max(now, tick))
        schedule.save(update_fields=["last_job", "last_run_at", "next_run_at"])
        if skipped:
            audit.record(user=None, via="system", action="schedule_skip",
                         target=f"schedule {schedule.pk}",
                         detail={"result": "skipped", "tick": tick.isoformat(),
                                 "reason": skipped})
    return run


def _overlap(schedule: Schedule) -> str:
    """Why this tick is skipped (``overlap: skip`` and the last run has not finished)."""
    if schedule.overlap != "skip" or schedule.last_job_id is None:
        return ""
    state = Job.objects.filter(pk=schedule.last_job_id).values_list("state", flat=True).first()
    if state in OPEN:
        return f"the previous run (job {schedule.last_job_id}) is still {state}"
    return ""


def _submit(schedule: Schedule, tick: datetime, now: datetime) -> Job:
    data = payload_bytes(schedule.payload)
    # a unique key per tick unless the schedule has its own: a submit repeated after a
    # crash attaches to the job gearmand holds instead of running the tick twice
    unique = schedule.unique or f"hq-s{schedule.pk}-{tick.astimezone(UTC):%Y%m%dT%H%M%S}"
    late = max((timezone.now() - tick).total_seconds(), 0.0)
    job, conn = services.submit_recorded(
        function=schedule.function, payload=data, unique=unique, priority=schedule.priority,
        background=True, user=None, via="system", key=None, retry_of=None,
        action="schedule_run", now=now, scheduled_for=tick,
        detail={"schedule": schedule.pk, "tick": tick.isoformat(), "late_s": round(late, 3)})
    conn.close()
    return job
