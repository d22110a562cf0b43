"""Celery tasks for jobs: thin wrappers over the services."""

from celery import shared_task
from django.conf import settings

from . import retention


@shared_task
def apply_retention() -> str:
    """Drop history older than ``HQ_EVENT_RETENTION_DAYS`` (hourly, from Celery beat)."""
    return retention.apply_retention(days=settings.HQ_EVENT_RETENTION_DAYS).summary()
