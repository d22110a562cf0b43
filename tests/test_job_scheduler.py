"""The scheduler (``jobs/scheduler.py``): jobs HQ holds are submitted at their time, once.

The clock is the ``now`` the scheduler is given (no sleeping until a job is due). Two
schedulers race over the same due jobs in threads; a scheduler process is killed -9 in the
middle of its work and another takes over; a job whose time passed while HQ was down is
submitted at the next tick and its page says how late. "Once" is judged by gearmand (how
many jobs it holds) and by the audit log (one ``submit_scheduled`` row per job, written in
the transaction that submits it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from broker.admin import AdminClient
from broker.client import ServerAddress
from hq.models import AuditEntry
from jobs import scheduler, services
from jobs.models import Job
from tests.interop.php_scripts import php_worker
from tests.support.stack import ROOT, Gearmand, Tap, database_url, wait_for

if TYPE_CHECKING:
    from django.test import Client
    from rest_framework.test import APIClient

pytestmark = pytest.mark.gearmand


@pytest.fixture
def gm(gearmand: Gearmand, transactional_db: None) -> Iterator[Gearmand]:
    with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress("gm-s", "127.0.0.1",
                                                             gearmand.port)]):
        yield gearmand


def held(port: int, function: str) -> int:
    """How many jobs of ``function`` gearmand holds (its admin ``status``)."""
    with AdminClient("127.0.0.1", port) as admin:
        return sum(s.total for s in admin.status() if s.function == function)


def schedule(n: int, function: str, *, at: datetime, now: datetime) -> list[int]:
    return [services.submit(function=function, payload=f"p{i}".encode(), run_at=at,
                            user=None, via="api", now=now).job.pk for i in range(n)]


def submits_per_job() -> Counter[str]:
    return Counter(AuditEntry.objects.filter(action="submit_scheduled")
                   .values_list("target", flat=True))


def test_a_job_is_submitted_at_its_time_not_before(gm: Gearmand) -> None:
    t0 = timezone.now()
    (job_id,) = schedule(1, "later", at=t0 + timedelta(hours=1), now=t0)
    job = Job.objects.get(pk=job_id)
    assert (job.state, job.handle, job.boot_id) == ("scheduled", "", None)
    assert job.unique.startswith("hq-")  # so a repeated submit would coalesce
    assert scheduler.submit_due(now=t0 + timedelta(minutes=59, seconds=59)).submitted == 0
    assert held(gm.port, "later") == 0
    tick = scheduler.submit_due(now=t0 + timedelta(hours=1))
    assert tick.submitted == 1
    job.refresh_from_db()
    assert job.state == "queued" and job.handle.startswith("H:")
    assert held(gm.port, "later") == 1
    assert scheduler.submit_due(now=t0 + timedelta(hours=2)).submitted == 0
    assert held(gm.port, "later") == 1
    assert submits_per_job() == {f"job {job_id}": 1}


def test_two_schedulers_submit_each_job_once(gm: Gearmand,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler, "BATCH", 10)  # several batches each: both take some
    t0 = timezone.now()
    ids = schedule(120, "race", at=t0 + timedelta(minutes=5), now=t0)
    due = t0 + timedelta(minutes=5, seconds=1)
    ticks: list[scheduler.Tick] = []
    start = threading.Barrier(2)

    def run() -> None:
        try:
            start.wait()
            ticks.append(scheduler.submit_due(now=due))
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(t.submitted for t in ticks) == 120
    assert all(t.submitted > 0 for t in ticks), [t.submitted for t in ticks]  # both worked
    assert held(gm.port, "race") == 120
    assert submits_per_job() == {f"job {i}": 1 for i in ids}
    handles = list(Job.objects.filter(pk__in=ids).values_list("handle", flat=True))
    assert len(set(handles)) == 120 and all(h.startswith("H:") for h in handles)


SCHEDULER = """
import os, sys, django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hq.settings")
django.setup()
from datetime import datetime
from django.test import override_settings
from broker.client import ServerAddress
from jobs import scheduler
port, due = int(sys.argv[1]), datetime.fromisoformat(sys.argv[2])
with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress("gm-s", "127.0.0.1", port)]):
    print(scheduler.submit_due(now=due, max_s=120).summary(), flush=True)
"""


def run_scheduler(port: int, due: datetime) -> subprocess.Popen[str]:
    env = dict(os.environ, DATABASE_URL=database_url(), PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", SCHEDULER, str(port), due.isoformat()],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def test_a_scheduler_killed_mid_run_and_another_one_submit_each_job_once(
        gm: Gearmand) -> None:
    t0 = timezone.now()
    n_jobs = 3000  # the scheduler submits thousands a second: enough to be killed mid-run
    ids = schedule(n_jobs, "restart", at=t0 + timedelta(minutes=1), now=t0)
    due = t0 + timedelta(minutes=2)
    first = run_scheduler(gm.port, due)

    def under_way() -> bool:
        assert first.poll() is None, first.communicate()[0]
        return Job.objects.filter(pk__in=ids, state="queued").count() >= 30

    wait_for(under_way, timeout=60, message="the first scheduler under way")
    os.killpg(first.pid, signal.SIGKILL)  # no cleanup, its transaction dies with it
    first.wait(10)
    mid = Job.objects.filter(pk__in=ids, state="queued").count()
    assert 30 <= mid < n_jobs, mid
    second = run_scheduler(gm.port, due)
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 0, out
    assert Job.objects.filter(pk__in=ids, state="queued").count() == n_jobs
    # a job the killed one had sent but not committed was sent again and, by its unique
    # key, coalesced: gearmand holds each job once
    assert held(gm.port, "restart") == n_jobs
    assert submits_per_job() == {f"job {i}": 1 for i in ids}


def test_a_job_due_while_hq_was_down_goes_at_the_next_tick_and_says_how_late(
        gm: Gearmand, operator: Client) -> None:
    real = timezone.now()
    (job_id,) = schedule(1, "overdue", at=real - timedelta(hours=3, minutes=12),
                         now=real - timedelta(hours=5))
    tick = scheduler.submit_due()
    assert tick.submitted == 1
    job = Job.objects.get(pk=job_id)
    late = job.late_by
    assert late is not None and timedelta(hours=3, minutes=12) <= late < timedelta(hours=3,
                                                                                  minutes=13)
    entry = AuditEntry.objects.get(action="submit_scheduled")
    assert entry.via == "system" and 11520 <= entry.detail["late_s"] < 11580
    page = operator.get(f"/jobs/{job_id}/").content.decode()
    assert "3 h 12 min late" in page


def test_when_no_gearmand_accepts_the_jobs_stay_due(transactional_db: None) -> None:
    from tests.support.stack import free_port

    with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress("gm-s", "127.0.0.1",
                                                             free_port())]):
        t0 = timezone.now()
        (job_id,) = schedule(1, "waits", at=t0 + timedelta(seconds=1), now=t0)
        tick = scheduler.submit_due(now=t0 + timedelta(seconds=2))
    assert tick.submitted == 0 and "cannot connect" in tick.gearmand_down
    job = Job.objects.get(pk=job_id)
    assert (job.state, job.handle) == ("scheduled", "")


def test_a_scheduled_job_becomes_the_tap_row_keeping_its_id(
        tap: Tap, api_operator: APIClient, tmp_path: Path) -> None:
    """Both tap modes: the tap's row for the submitted job takes the scheduled job's id."""
    with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress(tap.server, "127.0.0.1",
                                                             tap.port)]):
        t0 = timezone.now()
        r = api_operator.post("/api/v1/jobs/", {
            "function": "reverse", "payload": "at nine",
            "run_at": (t0 + timedelta(hours=9)).isoformat()}, format="json")
        assert r.status_code == 201, r.json()
        scheduled = r.json()
        assert (scheduled["state"], scheduled["handle"]) == ("scheduled", "")
        listed = api_operator.get("/api/v1/jobs/?state=scheduled").json()["results"]
        assert [j["id"] for j in listed] == [scheduled["id"]]
        with php_worker(tap, "w-1", ("reverse",), log=tmp_path / "w.log"):
            assert scheduler.submit_due(now=t0 + timedelta(hours=9)).submitted == 1

            def done() -> Job | None:
                scheduler.submit_due(now=t0 + timedelta(hours=9))
                job = Job.objects.filter(pk=scheduled["id"], state="completed").first()
                return job if job is not None and job.boot_id else None

            job = wait_for(done, message="the scheduled job linked and completed")
    assert Job.objects.filter(server__name=tap.server).count() == 1
    assert job.result == "enin ta" and job.scheduled_for is not None
    body = api_operator.get(f"/api/v1/jobs/{scheduled['id']}/").json()
    assert body["scheduled_for"] == scheduled["scheduled_for"]
    assert body["handle"].startswith("H:") and body["boot"] is not None
    events = api_operator.get(f"/api/v1/jobs/{scheduled['id']}/events/").json()["results"]
    assert [e["kind"] for e in events] == ["submitted", "started", "completed"]
