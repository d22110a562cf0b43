"""Celery tasks for jobs: thin wrappers over the services."""

from celery import shared_task
from django.conf import settings

from . import retention, scheduler
from .recovery import engine as recovery

#: how long one scheduler task goes on submitting jobs as they fall due (beat: every 1 s)
FOLLOW_S = 0.8


@shared_task
def apply_retention() -> str:
    """Drop history older than ``HQ_EVENT_RETENTION_DAYS`` (hourly, from Celery beat)."""
    return retention.apply_retention(days=settings.HQ_EVENT_RETENTION_DAYS).summary()


@shared_task(ignore_result=True, expires=5)
def submit_due_jobs() -> str:
    """Submit the scheduled jobs whose time came (every second, from Celery beat), and
    those that fall due before the next beat (looking every ``scheduler.POLL_S``)."""
    return scheduler.submit_due(follow_s=FOLLOW_S).summary()


@shared_task(ignore_result=True, expires=5)
def recover_failed_jobs() -> str:
    """Retry policies: decide on newly failed or lost jobs — retry later, or dead letter
    (every second, from Celery beat; jobs/recovery/engine.py)."""
    return recovery.sweep(max_s=FOLLOW_S).summary()
