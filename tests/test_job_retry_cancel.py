"""Retry and cancel (``POST /api/v1/jobs/{id}/retry/``, ``…/cancel/``) against a real
gearmand watched by HQ's tap, with PHP workers.

Retry: a failed job runs again with the same bytes, linked both ways (``retry_of`` /
``retried_by``, and the ``retry_of=`` filter); a job whose payload is truncated, redacted or
was never recorded, or that has not finished, is a 409 that says why. Cancel: a queued job
is cancelled in gearmand (``show jobs`` marks it ignored and no worker ever runs it); a
running or finished job is a 409; a job HQ holds for later is never submitted.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.test import override_settings
from django.utils import timezone

from broker.admin import AdminClient
from broker.client import ServerAddress
from hq.models import AuditEntry
from jobs import scheduler, services
from jobs.models import Boot, Job, Server
from tests.interop.php_scripts import php_worker
from tests.support.stack import Gearmand, Tap, jobs_of, kinds, start_tap, wait_for

if TYPE_CHECKING:
    from rest_framework.test import APIClient

pytestmark = pytest.mark.gearmand


@pytest.fixture
def tapped(gearmand: Gearmand, tmp_path: Path, transactional_db: None) -> Iterator[Tap]:
    tap = start_tap("capture", gearmand, tmp_path)
    with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress(tap.server, "127.0.0.1",
                                                             tap.port)]):
        yield tap
    tap.stop()


def linked(job_id: int, state: str) -> Job:
    def done() -> Job | None:
        services.link_pending()
        job = Job.objects.filter(pk=job_id).first()
        return job if job is not None and job.boot_id and job.state == state else None

    return wait_for(done, message=f"job {job_id} linked and {state}")


def show_jobs(port: int) -> dict[str, list[str]]:
    """gearmand's ``show jobs``: handle → [retries, ignored, queued]."""
    with AdminClient("127.0.0.1", port) as admin:
        return {line.split("\t")[0]: line.split("\t")[1:] for line in admin.command("show jobs")}


def test_retry_reruns_a_failed_job_with_the_same_bytes_linked_both_ways(
        tapped: Tap, api_operator: APIClient, api_viewer: APIClient, tmp_path: Path) -> None:
    payload = "order 4711 \u00e9"
    with php_worker(tapped, "w-1", ("fail", "reverse"), log=tmp_path / "w.log"):
        first = api_operator.post("/api/v1/jobs/", {"function": "fail", "payload": payload,
                                                    "unique": "order-4711", "priority": "low"},
                                  format="json").json()
        failed = linked(first["id"], "failed")
        r = api_operator.post(f"/api/v1/jobs/{failed.pk}/retry/")
        assert r.status_code == 201, r.json()
        again = r.json()
        assert again["retry_of"] == failed.pk and again["id"] != failed.pk
        retried = linked(again["id"], "failed")
    # the tap saw the same bytes, function, unique and priority go to gearmand again
    assert (retried.payload, retried.function, retried.unique, retried.priority) == (
        payload, "fail", "order-4711", "low")
    assert retried.background is True and kinds(retried) == ["submitted", "started", "failed"]
    assert jobs_of(tapped.server).count() == 2
    original = api_viewer.get(f"/api/v1/jobs/{failed.pk}/").json()
    assert original["retried_by"] == [again["id"]] and original["retry_of"] is None
    assert api_viewer.get(f"/api/v1/jobs/{again['id']}/").json()["retry_of"] == failed.pk
    listed = api_viewer.get(f"/api/v1/jobs/?retry_of={failed.pk}").json()["results"]
    assert [j["id"] for j in listed] == [again["id"]]
    assert listed[0]["retried_by"] == []
    everything = {j["id"]: j for j in api_viewer.get("/api/v1/jobs/").json()["results"]}
    assert everything[failed.pk]["retried_by"] == [again["id"]]
    entry = AuditEntry.objects.get(action="retry", detail__result="ok")
    assert (entry.username, entry.via, entry.target) == ("opal", "api", f"job {again['id']}")
    assert entry.detail["retry_of"] == failed.pk
    # the same Idempotency-Key twice: one new job
    keyed = [api_operator.post(f"/api/v1/jobs/{failed.pk}/retry/",
                               HTTP_IDEMPOTENCY_KEY="k-1").json()["id"] for _ in range(2)]
    assert keyed[0] == keyed[1]
    assert Job.objects.filter(retry_of=failed.pk).count() == 2


@pytest.fixture
def recorded(db: None) -> dict[str, Job]:
    """Jobs as a tap would have recorded them, in the states and shapes retry refuses."""
    server = Server.objects.create(name="gm-x", address="127.0.0.1:1")
    boot = Boot.objects.create(server=server, token="1", first_seen=timezone.now())
    now = timezone.now()

    def job(handle: str, **kw: object) -> Job:
        values: dict[str, object] = {"function": "resize", "state": "failed",
                                     "submitted_at": now, "updated_at": now,
                                     "finished_at": now, "payload_text": "x",
                                     "payload_size": 1}
        values.update(kw)
        return Job.objects.create(server=server, boot=boot, handle=handle, **values)

    return {
        "truncated": job("H:x:1", payload_text="a" * 10, payload_size=100_000),
        "redacted": job("H:x:2", function="billing_charge", payload_text=None, payload_size=9),
        "unseen": job("H:x:3", payload_text=None, payload_size=0, submitted_at=None),
        "running": job("H:x:4", state="running", finished_at=None),
        "completed": job("H:x:5", state="completed"),
        "cancelled": job("H:x:6", state="cancelled"),
    }


@override_settings(HQ_REDACT=["billing_*"])
def test_retry_says_why_it_cannot(recorded: dict[str, Job], api_operator: APIClient) -> None:
    reasons = {}
    for name in ("truncated", "redacted", "unseen", "running"):
        r = api_operator.post(f"/api/v1/jobs/{recorded[name].pk}/retry/")
        assert r.status_code == 409, (name, r.json())
        assert r.json()["error"]["code"] == "conflict"
        reasons[name] = r.json()["error"]["message"]
    assert "truncated (stored 10 of 100,000 bytes, HQ_PAYLOAD_MAX)" in reasons["truncated"]
    assert "not stored (HQ_REDACT)" in reasons["redacted"]
    assert "payload was not recorded" in reasons["unseen"]
    assert "it is running: only a finished job can be retried" in reasons["running"]
    assert api_operator.post("/api/v1/jobs/999999/retry/").status_code == 404
    refused = AuditEntry.objects.filter(action="retry", detail__result="refused")
    assert refused.count() == 5
    assert not Job.objects.filter(retry_of__isnull=False).exists()


def test_cancel_refuses_running_and_finished_jobs(recorded: dict[str, Job],
                                                 api_operator: APIClient) -> None:
    for name, words in (("running", "it is running: gearmand cannot stop a job"),
                        ("completed", "it has already finished (completed)")):
        r = api_operator.post(f"/api/v1/jobs/{recorded[name].pk}/cancel/")
        assert r.status_code == 409, r.json()
        assert words in r.json()["error"]["message"]
    again = api_operator.post(f"/api/v1/jobs/{recorded['cancelled'].pk}/cancel/")
    assert again.status_code == 200 and again.json()["state"] == "cancelled"  # a no-op


def test_cancel_a_queued_job_and_no_worker_runs_it(tapped: Tap, api_operator: APIClient,
                                                   tmp_path: Path) -> None:
    post = api_operator.post
    doomed = post("/api/v1/jobs/", {"function": "reverse", "payload": "doomed"},
                  format="json").json()
    kept = post("/api/v1/jobs/", {"function": "reverse", "payload": "kept"},
                format="json").json()
    r = post(f"/api/v1/jobs/{doomed['id']}/cancel/")
    assert r.status_code == 200, r.json()
    assert r.json()["state"] == "cancelled"
    # gearmand keeps it listed, marked ignored, until a worker would take it
    held = show_jobs(tapped.gearmand.port)
    assert held[doomed["handle"]][1] == "1" and held[kept["handle"]][1] == "0"
    with php_worker(tapped, "w-1", ("reverse",), log=tmp_path / "w.log"):
        done = linked(kept["id"], "completed")
        cancelled = linked(doomed["id"], "cancelled")
    assert done.result == "tpek"
    assert "started" not in kinds(cancelled) and "cancelled" in kinds(cancelled)
    assert cancelled.result is None
    assert doomed["handle"] not in show_jobs(tapped.gearmand.port)
    entry = AuditEntry.objects.get(action="cancel")
    assert entry.detail == {"result": "ok", "was": "queued", "handle": doomed["handle"],
                            "server": tapped.server}


def test_cancel_a_running_job_is_refused(tapped: Tap, api_operator: APIClient,
                                         tmp_path: Path) -> None:
    with php_worker(tapped, "w-1", ("slow",), log=tmp_path / "w.log"):
        job = api_operator.post("/api/v1/jobs/", {"function": "slow", "payload": "3000"},
                                format="json").json()
        linked(job["id"], "running")
        r = api_operator.post(f"/api/v1/jobs/{job['id']}/cancel/")
        assert r.status_code == 409
        assert "it is running" in r.json()["error"]["message"]
        assert linked(job["id"], "completed").result == "slept 3000"


def test_a_scheduled_job_cancelled_is_never_submitted(tapped: Tap,
                                                      api_operator: APIClient) -> None:
    run_at = timezone.now() + timedelta(hours=1)
    job = api_operator.post("/api/v1/jobs/", {"function": "reverse", "payload": "later",
                                              "run_at": run_at.isoformat()},
                            format="json").json()
    assert (job["state"], job["handle"], job["boot"]) == ("scheduled", "", None)
    r = api_operator.post(f"/api/v1/jobs/{job['id']}/cancel/")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    tick = scheduler.submit_due(now=run_at + timedelta(minutes=1))
    assert tick.submitted == 0
    assert Job.objects.get(pk=job["id"]).handle == ""
    assert show_jobs(tapped.gearmand.port) == {}
    assert AuditEntry.objects.get(action="cancel").detail == {"result": "ok",
                                                              "was": "scheduled"}
