"""Celery tasks for jobs: thin wrappers over the services."""

from celery import shared_task
from django.conf import settings

from . import retention, scheduler


@shared_task
def apply_retention() -> str:
    """Drop history older than ``HQ_EVENT_RETENTION_DAYS`` (hourly, from Celery beat)."""
    return retention.apply_retention(days=settings.HQ_EVENT_RETENTION_DAYS).summary()


@shared_task(ignore_result=True, expires=5)
def submit_due_jobs() -> str:
    """Submit the scheduled jobs whose time came (every second, from Celery beat)."""
    return scheduler.submit_due().summary()
