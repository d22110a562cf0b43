"""Job of death on the real stack: gearmand ``--job-retries=1`` drops a background job
whose worker died holding it; the tap's reconciliation with ``show jobs`` records it lost;
the retry policy (``retry_on: lost``) retries it; each run kills its PHP worker (SIGKILL
mid-job). After ``HQ_JOB_OF_DEATH`` (3) dead workers across the chain the last job is a
dead letter flagged job of death, and the policy retries it no more, though attempts are
left."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.test import override_settings
from django.utils import timezone

from broker.client import ServerAddress
from hq.models import AuditEntry
from jobs import scheduler, services
from jobs.models import Job
from jobs.recovery import engine, policies
from tests.interop.php_scripts import php_client, start_php_worker
from tests.support.stack import Gearmand, Tap, jobs_of, start_tap, stop_process, wait_for

if TYPE_CHECKING:
    from rest_framework.test import APIClient

pytestmark = pytest.mark.gearmand


@pytest.fixture
def tapped(gearmand_factory: Any, tmp_path: Path, transactional_db: None,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Tap]:
    monkeypatch.setattr(engine, "GRACE", timedelta(0))
    g: Gearmand = gearmand_factory("--job-retries=1")
    tap = start_tap("capture", g, tmp_path)
    with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress(tap.server, "127.0.0.1",
                                                             tap.port)],
                           HQ_JOB_OF_DEATH=3):
        yield tap
    tap.stop()


def kill_the_worker_of(tap: Tap, job_id: int, run: int, log: Path) -> Job:
    """A PHP worker takes the job (``slow``), is killed mid-job; the job ends lost."""
    worker = start_php_worker(tap.port, tap.gearmand.port, f"w-{run}", ("slow",), log)
    try:
        def running() -> Job | None:
            services.link_pending()
            job = Job.objects.filter(pk=job_id, state="running").first()
            return job

        wait_for(running, message=f"run {run} running")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        stop_process(worker)

    def lost() -> Job | None:
        services.link_pending()
        return Job.objects.filter(pk=job_id, state="lost").first()

    return wait_for(lost, timeout=30, message=f"run {run} lost (reconciled)")


def test_a_payload_that_kills_three_workers_is_a_job_of_death(
        tapped: Tap, tmp_path: Path, api_viewer: APIClient) -> None:
    policies.create(data={"function": "slow", "max_attempts": 10, "backoff_base_s": 1,
                          "backoff_max_s": 1, "retry_on": ["lost"]}, user=None, via="cli")
    log = tmp_path / "w.log"
    php_client(tapped.port, "background", "slow", "60000")
    first = wait_for(lambda: jobs_of(tapped.server).first(), message="the job recorded")
    job_id = first.pk
    now = timezone.now()
    for run in (1, 2, 3):
        job = kill_the_worker_of(tapped, job_id, run, log)
        out = engine.sweep(now=now)
        job.refresh_from_db()
        assert job.death_count == run, (run, out)
        if run < 3:
            assert out.retried == 1 and not job.dead, out
            retry = Job.objects.get(retry_of=job.pk)
            now += timedelta(seconds=1)
            assert scheduler.submit_due(now=now).submitted == 1
            job_id = retry.pk
    assert (out.retried, out.dead) == (0, 1), out
    assert job.dead and job.job_of_death and job.recovery == "dead"
    assert len(engine.chain_of(job)) == 3  # 3 of 10 attempts: not spent, but never again
    assert not Job.objects.filter(retry_of=job.pk).exists()
    assert engine.sweep(now=now + timedelta(hours=1)).retried == 0
    entry = AuditEntry.objects.get(action="dead_letter")
    assert entry.detail["reason"] == "job of death" and entry.detail["deaths"] == 3
    assert entry.via == "policy"
    body = api_viewer.get(f"/api/v1/jobs/{job.pk}/").json()
    assert (body["dead"], body["death_count"]) == (True, 3)
    assert engine.jobs_of_death_by_function() == {(job.server_id, "slow"): 1}
