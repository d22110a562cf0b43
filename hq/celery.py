"""Celery app: alert evaluation, notifications, scheduled submits, retention."""

import os
from typing import Any

from celery import Celery
from celery.signals import beat_init, worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hq.settings")

app = Celery("hq")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
@beat_init.connect
def _refuse_public_secret_key(**_: Any) -> None:
    """A worker or beat refuses to start with a public SECRET_KEY (hq/security.py).
    SystemExit, not an exception: Celery logs and ignores exceptions from signal handlers."""
    from django.core.exceptions import ImproperlyConfigured

    from hq.security import require_secret_key

    try:
        require_secret_key()
    except ImproperlyConfigured as exc:
        raise SystemExit(f"ERROR: {exc}") from None
