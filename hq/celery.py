"""Celery app: alert evaluation, notifications, scheduled submits, retention."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hq.settings")

app = Celery("hq")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
