"""The recovery sweep runs in production: Celery beat calls it every second, as a task
Celery knows, and the task decides on a failed job like the tests' direct sweeps do."""

from __future__ import annotations

import pytest
from django.conf import settings

from hq.celery import app
from jobs import tasks

pytestmark = pytest.mark.django_db


def test_beat_runs_the_recovery_sweep_every_second() -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["recover-failed-jobs"]
    assert entry["schedule"] <= 1.0
    app.loader.import_default_modules()
    assert entry["task"] in app.tasks
    assert app.tasks[entry["task"]].name == tasks.recover_failed_jobs.name


def test_the_task_sweeps() -> None:
    assert isinstance(tasks.recover_failed_jobs(), str)  # nothing to decide: a summary
