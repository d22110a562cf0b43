"""Celery tasks for monitoring: thin wrappers over services."""

from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from . import services


@shared_task
def refresh_recent_rollups(minutes: int = 10) -> int:
    """Recompute the last few minutes' rollups (late events land in closed minutes too)."""
    return services.refresh_rollups(since=timezone.now() - timedelta(minutes=minutes))


@shared_task
def prune_old_snapshots(days: int = 8) -> int:
    return services.prune_snapshots(older_than=timedelta(days=days))
