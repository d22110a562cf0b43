"""HQ_GEARMAN as a list of servers, and the scheduler's place in Celery beat."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.utils import timezone

from broker.client import ServerAddress, parse_servers
from jobs import tasks
from jobs.models import Job


def test_hq_gearman_is_a_list_of_named_servers() -> None:
    assert parse_servers("gm1=10.0.0.5:4730, gm2=10.0.0.6:4731", "local") == [
        ServerAddress("gm1", "10.0.0.5", 4730), ServerAddress("gm2", "10.0.0.6", 4731)]
    assert parse_servers("127.0.0.1:4730", "local") == [ServerAddress("local", "127.0.0.1",
                                                                      4730)]
    assert parse_servers("box", "local") == [ServerAddress("local", "box", 4730)]
    assert parse_servers("a:1,b:2", "local") == [ServerAddress("a:1", "a", 1),
                                                 ServerAddress("b:2", "b", 2)]
    assert parse_servers("gm=[::1]:4730", "x") == [ServerAddress("gm", "::1", 4730)]
    for bad in ("gm=host:port", "gm=h:0", "gm=h:70000", "gm=a:1,gm=b:2"):
        with pytest.raises(ValueError, match="HQ_GEARMAN"):
            parse_servers(bad, "local")


def test_beat_runs_the_scheduler_every_second(db: None) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["submit-due-jobs"]
    assert entry == {"task": "jobs.tasks.submit_due_jobs", "schedule": 1.0}
    assert tasks.submit_due_jobs.name == "jobs.tasks.submit_due_jobs"
    assert tasks.submit_due_jobs() == "submitted 0, linked 0"
    assert not Job.objects.filter(submitted_at__lte=timezone.now()).exists()
