"""Bulk actions by filter (``POST /api/v1/jobs/bulk/``, ``GET /api/v1/bulk/{id}/``,
``jobs/bulk.py``) against a real gearmand.

The big one: 10,000 failed jobs retried in the background, the process doing it killed -9
in the middle and another one finishing: done = 10,000, and every job retried exactly once
(one retry row each, and gearmand holding exactly 10,000 jobs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
from django.test import override_settings
from django.utils import timezone

from broker.admin import AdminClient
from broker.client import ServerAddress
from hq.models import AuditEntry
from jobs import bulk, scheduler
from jobs.models import Boot, BulkAction, Job, Server
from tests.support.stack import ROOT, Gearmand, database_url, wait_for

if TYPE_CHECKING:
    from rest_framework.test import APIClient

pytestmark = pytest.mark.gearmand


@pytest.fixture
def gm(gearmand: Gearmand, transactional_db: None) -> Iterator[Gearmand]:
    with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress("gm-b", "127.0.0.1",
                                                             gearmand.port)]):
        yield gearmand


def held(port: int, function: str) -> int:
    with AdminClient("127.0.0.1", port) as admin:
        return sum(s.total for s in admin.status() if s.function == function)


def recorded_jobs(n: int, *, function: str, state: str, minutes_ago: int = 30) -> list[int]:
    """``n`` jobs as a tap records them (one boot of server gm-b), oldest first."""
    server, _ = Server.objects.get_or_create(name="gm-b")
    boot, _ = Boot.objects.get_or_create(server=server, token="1",
                                         defaults={"first_seen": timezone.now()})
    at = timezone.now() - timedelta(minutes=minutes_ago)
    done = state in ("failed", "completed")
    start = Job.objects.filter(boot=boot).count()
    Job.objects.bulk_create([
        Job(server=server, boot=boot, handle=f"H:b:{start + i}", function=function,
            unique=f"u-{function}-{start + i}", priority="normal", background=True,
            state=state, submitted_at=at, finished_at=at if done else None, updated_at=at,
            payload_text=f"p{i}", payload_size=len(f"p{i}"), error="boom" if done else "")
        for i in range(n)], batch_size=2000)
    return list(Job.objects.filter(function=function).order_by("id")
                .values_list("id", flat=True))


def test_asking_counts_first_and_checks_what_it_is_given(
        api_operator: APIClient, api_viewer: APIClient, db: None) -> None:
    recorded_jobs(7, function="resize_image", state="failed")
    recorded_jobs(3, function="resize_image", state="completed")
    r = api_operator.post("/api/v1/jobs/bulk/", {
        "action": "retry", "filter": {"state": "failed", "function": "resize_image"},
        "dry_run": True}, format="json")
    assert (r.status_code, r.json()) == (200, {"count": 7})
    assert not BulkAction.objects.exists()
    assert bulk.describe("retry", 1284, {"state": "failed", "function": "resize_image",
                                         "submitted_after": "2026-11-29T09:00:00Z"}) == (
        "Retry 1,284 failed `resize_image` jobs submitted after 2026-11-29T09:00:00Z?")
    for body, words in (({"action": "retry", "filter": {"colour": "red"}}, "unknown filter"),
                        ({"action": "retry", "filter": {"state": "nope"}}, "unknown state"),
                        ({"action": "explode"}, "action")):
        r = api_operator.post("/api/v1/jobs/bulk/", body, format="json")
        assert r.status_code == 400 and words in r.json()["error"]["message"], r.json()
    assert api_viewer.post("/api/v1/jobs/bulk/", {"action": "retry"},
                           format="json").status_code == 403
    assert api_viewer.get("/api/v1/bulk/1/").status_code == 404


def test_bulk_cancel_through_the_api_with_progress(gm: Gearmand,
                                                   api_operator: APIClient) -> None:
    queued = [api_operator.post("/api/v1/jobs/", {"function": "doomed", "payload": str(n)},
                                format="json").json()["id"] for n in range(5)]
    recorded_jobs(2, function="doomed", state="running")
    r = api_operator.post("/api/v1/jobs/bulk/", {
        "action": "cancel", "filter": {"function": "doomed", "state": "queued,running"}},
        format="json")
    assert r.status_code == 202, r.json()
    bulk_id = r.json()["id"]
    assert r.json()["count"] == 7
    progress = api_operator.get(f"/api/v1/bulk/{bulk_id}/").json()
    assert (progress["state"], progress["done"], progress["total"]) == ("running", 0, 7)
    scheduler.submit_due()  # one tick of the scheduler (Celery beat every second)
    progress = api_operator.get(f"/api/v1/bulk/{bulk_id}/").json()
    assert (progress["state"], progress["total"], progress["done"], progress["failed"]) == (
        "done", 7, 5, 2)
    assert all("it is running" in e["error"] for e in progress["errors"])
    assert set(Job.objects.filter(pk__in=queued).values_list("state", flat=True)) == {
        "cancelled"}
    assert AuditEntry.objects.filter(action="cancel", detail__result="ok").count() == 5
    assert list(AuditEntry.objects.filter(action="bulk_cancel").values_list(
        "detail__result", flat=True).order_by("id")) == ["started", "done"]


RUNNER = """
import os, sys, django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hq.settings")
django.setup()
from django.test import override_settings
from broker.client import ServerAddress
from jobs import bulk
with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress("gm-b", "127.0.0.1",
                                                         int(sys.argv[1]))]):
    while bulk.advance(max_s=600):
        pass
print("finished", flush=True)
"""


def run_bulk(port: int) -> subprocess.Popen[str]:
    env = dict(os.environ, DATABASE_URL=database_url(), PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def test_ten_thousand_failed_jobs_retried_once_each_across_a_kill(gm: Gearmand) -> None:
    originals = recorded_jobs(10_000, function="resize_image", state="failed")
    action, count = bulk.start(action="retry", filter={"state": "failed",
                                                       "function": "resize_image"},
                               user=None, via="api")
    assert action is not None and count == 10_000
    first = run_bulk(gm.port)
    wait_for(lambda: BulkAction.objects.get(pk=action.pk).done >= 1_000, timeout=120,
             message="the first runner under way")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    mid = BulkAction.objects.get(pk=action.pk)
    assert mid.state == "running" and 1_000 <= mid.done < 10_000
    BulkAction.objects.filter(pk=action.pk).update(leased_until=None)  # as if it expired
    second = run_bulk(gm.port)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    final = BulkAction.objects.get(pk=action.pk)
    assert (final.state, final.total, final.done, final.failed) == ("done", 10_000, 10_000, 0)
    retries = Counter(Job.objects.filter(retry_of__isnull=False)
                      .values_list("retry_of_id", flat=True))
    assert set(retries) == set(originals) and set(retries.values()) == {1}
    assert held(gm.port, "resize_image") == 10_000
