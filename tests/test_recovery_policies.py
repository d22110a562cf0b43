"""Retry policies on the real stack: a PHP client submits straight to gearmand (not through
HQ), a PHP worker fails every run, HQ's capture tap records it; HQ's recovery sweep
retries with backoff (controlled clock) until the chain is spent and its last job is dead;
a foreground job is never retried; two sweeps racing decide each job once; a requeue from
the dead letters runs a fresh chain that a working worker completes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from broker.client import ServerAddress
from hq.models import AuditEntry
from jobs import scheduler, services
from jobs.models import Job, RetryPolicy
from jobs.recovery import engine, policies
from tests.interop.php_scripts import php_client, php_worker
from tests.support.stack import Gearmand, Tap, jobs_of, start_tap, wait_for

if TYPE_CHECKING:
    from rest_framework.test import APIClient

pytestmark = pytest.mark.gearmand


@pytest.fixture
def tapped(gearmand: Gearmand, tmp_path: Path, transactional_db: None,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Tap]:
    monkeypatch.setattr(engine, "GRACE", timedelta(0))
    tap = start_tap("capture", gearmand, tmp_path)
    with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress(tap.server, "127.0.0.1",
                                                             tap.port)]):
        yield tap
    tap.stop()


def policy(**over: object) -> RetryPolicy:
    data: dict[str, object] = {"function": "fail*", "max_attempts": 3, "backoff_base_s": 10,
                               "backoff_max_s": 15, "retry_on": ["failed"]}
    data.update(over)
    return policies.create(data=data, user=None, via="cli")


def finished(server: str, count: int) -> list[Job]:
    def ready() -> list[Job] | None:
        services.link_pending()
        rows = list(jobs_of(server).filter(boot__isnull=False,
                                           state__in=["failed", "completed"]))
        if len(rows) < count or services.link_pending():
            return None  # (a tap row counted above but written after the first link: again)
        return rows

    return wait_for(ready, message=f"{count} finished jobs")


def test_a_php_background_failure_is_retried_with_backoff_until_dead(
        tapped: Tap, tmp_path: Path, api_viewer: APIClient) -> None:
    policy()
    t0 = timezone.now()
    with php_worker(tapped, "w-1", ("fail",), log=tmp_path / "w.log"):
        assert php_client(tapped.port, "background", "fail", "order 7")["handle"]
        first = finished(tapped.server, 1)[0]
        assert first.retry_of_id is None and first.background is True
        out = engine.sweep(now=t0)
        assert out.retried == 1, out
        retry1 = Job.objects.get(retry_of=first.pk)
        # run 2 is held until base · 2^0 = 10 s later, on the scheduler's one-off path
        assert retry1.state == "scheduled" and retry1.scheduled_for == t0 + timedelta(seconds=10)
        assert retry1.action_key == f"policy:{first.pk}:2"
        assert scheduler.submit_due(now=t0 + timedelta(seconds=9)).submitted == 0
        assert engine.sweep(now=t0).retried == 0  # decided once
        assert scheduler.submit_due(now=t0 + timedelta(seconds=10)).submitted == 1
        finished(tapped.server, 2)
        retry1.refresh_from_db()
        assert retry1.state == "failed" and retry1.boot_id is not None  # the tap's row
        t1 = t0 + timedelta(seconds=10)
        assert engine.sweep(now=t1).retried == 1
        retry2 = Job.objects.get(retry_of=retry1.pk)
        # base · 2^1 = 20 s, capped at 15
        assert retry2.scheduled_for == t1 + timedelta(seconds=15)
        view = engine.chain_view(retry1, now=t1 + timedelta(seconds=5))
        assert (view.run, view.of, view.next_in_s) == (2, 3, 10.0)
        assert scheduler.submit_due(now=t1 + timedelta(seconds=15)).submitted == 1
        finished(tapped.server, 3)
        out = engine.sweep(now=t1 + timedelta(seconds=15))
    assert (out.retried, out.dead) == (0, 1)
    retry2.refresh_from_db()
    assert retry2.dead and retry2.state == "failed" and retry2.payload == "order 7"
    assert [j.pk for j in engine.chain_of(retry2)] == [first.pk, retry1.pk, retry2.pk]
    assert not Job.objects.filter(retry_of=retry2.pk).exists()
    assert jobs_of(tapped.server).count() == 3
    dead = api_viewer.get("/api/v1/jobs/?dead=true").json()["results"]
    assert [(j["id"], j["dead"], j["death_count"]) for j in dead] == [(retry2.pk, True, 0)]
    assert api_viewer.get("/api/v1/jobs/?dead=false").json()["results"][0]["dead"] is False
    entry = AuditEntry.objects.get(action="dead_letter")
    assert entry.via == "policy" and entry.detail["by"] == "policy"
    assert entry.detail["reason"] == "attempts spent" and entry.target == f"job {retry2.pk}"
    assert AuditEntry.objects.filter(action="retry_scheduled", via="policy").count() == 2


def test_foreground_jobs_and_uncounted_ends_are_never_retried(tapped: Tap,
                                                              tmp_path: Path) -> None:
    policy(function="*", retry_on=["failed"])
    with php_worker(tapped, "w-1", ("fail", "exception"), log=tmp_path / "w.log"):
        assert php_client(tapped.port, "normal", "fail", "fg")["rc"] == "WORK_FAIL"
        php_client(tapped.port, "background", "exception", "ex")
        jobs = finished(tapped.server, 2)
    out = engine.sweep()
    assert (out.retried, out.dead, out.left) == (0, 0, 2)
    assert not Job.objects.filter(retry_of__isnull=False).exists()
    assert sorted(Job.objects.filter(pk__in=[j.pk for j in jobs])
                  .values_list("recovery", flat=True)) == ["none", "none"]


def test_two_racing_sweeps_retry_each_failure_once(tapped: Tap, tmp_path: Path) -> None:
    policy(max_attempts=5)
    with php_worker(tapped, "w-1", ("fail",), log=tmp_path / "w.log"):
        for n in range(12):
            php_client(tapped.port, "background", "fail", f"p{n}")
        finished(tapped.server, 12)
    results: list[engine.Sweep] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        try:
            results.append(engine.sweep())
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.retried for r in results) == 12
    assert Job.objects.filter(action_key__startswith="policy:").count() == 12
    assert engine.sweep().retried == 0


def test_requeue_from_dead_letters_runs_a_fresh_chain(tapped: Tap, tmp_path: Path,
                                                      api_operator: APIClient) -> None:
    policy(function="fail", max_attempts=1)  # one run in all: dead at its first failure
    with php_worker(tapped, "w-1", ("fail",), log=tmp_path / "w.log"):
        php_client(tapped.port, "background", "fail", "abc")
        first = finished(tapped.server, 1)[0]
    assert engine.sweep().dead == 1
    first.refresh_from_db()
    assert first.dead
    r = api_operator.post(f"/api/v1/jobs/{first.pk}/retry/")
    assert r.status_code == 201, r.json()
    first.refresh_from_db()
    assert not first.dead and first.recovery == "requeued"
    again = Job.objects.get(pk=r.json()["id"])
    assert engine.chain_of(again) == [again]  # a fresh chain: run 1
    assert api_operator.post(f"/api/v1/jobs/{first.pk}/discard/").status_code == 409
