"""Gearman HQ's composition root. Loading the Celery app here makes every ``shared_task``
use it (Celery's Django pattern); a tap (``hq.tap.settings``: ``hq-tap``, or ``make run``'s
taps) enqueues no task, and leaves Celery, kombu and their imports out of its memory."""

import os

if os.environ.get("DJANGO_SETTINGS_MODULE") != "hq.tap.settings":
    from .celery import app as celery_app

    __all__ = ("celery_app",)
