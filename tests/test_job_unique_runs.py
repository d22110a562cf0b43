"""A job's page counts the earlier runs of the same work (same function and unique key:
what gearmand coalesces) and links to them; other functions and later runs do not count."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from jobs.models import Boot, Server
from jobs.selectors import earlier_runs
from tests.support.worlds import add_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def boot() -> Boot:
    server = Server.objects.create(name="uniq")
    return Boot.objects.create(server=server, token="1", first_seen=timezone.now())


def test_earlier_runs_of_the_same_function_and_unique(boot: Boot, client: Any,
                                                        vera: Any) -> None:
    now = timezone.now()
    for i in range(3):
        add_job(boot, f"H:u:{i}", function="report", unique="nightly-2026",
                submitted_at=now - timedelta(days=3 - i))
    add_job(boot, "H:u:9", function="other", unique="nightly-2026",
            submitted_at=now - timedelta(days=5))  # another function: not the same work
    job = add_job(boot, "H:u:3", function="report", unique="nightly-2026", submitted_at=now)
    later = add_job(boot, "H:u:4", function="report", unique="nightly-2026",
                    submitted_at=now + timedelta(hours=1))
    assert earlier_runs(job) == 3 and earlier_runs(later) == 4
    assert earlier_runs(add_job(boot, "H:u:5", unique="")) == 0

    client.force_login(vera)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "3 earlier runs with this unique" in page
    assert "?function=report&amp;unique=nightly-2026" in page
    first = client.get(f"/jobs/{job.pk - 4}/").content.decode()
    assert "earlier run" not in first
