"""Monitoring against real parts: gearmand + HQ's tap (capture and proxy) + Postgres.

Queue depth and workers come from the tap's admin poller; percentiles from rollups.
"""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from jobs.models import Job
from monitoring import histogram, selectors, services
from tests.support.gearman_cli import start_worker, stop_worker, submit_bg
from tests.support.stack import Tap, wait_for

pytestmark = pytest.mark.gearmand


def _queue(api: APIClient, server: str, function: str) -> dict | None:
    rows = api.get("/api/v1/queues/", {"server": server}).json()["results"]
    return next((r for r in rows if r["function"] == function), None)


def test_queue_depth_then_drain(tap: Tap, api_viewer: APIClient) -> None:
    for i in range(50):
        submit_bg(tap.port, "backlog", f"job {i}")
    row = wait_for(lambda: (q := _queue(api_viewer, tap.server, "backlog"))
                   and q["queued"] == 50
                   and q["oldest_queued_age_s"] is not None and q,
                   message="queued == 50 with the oldest job's age")
    assert row["workers"] == 0 and row["running"] == 0 and row["backed_up"] is True
    worker = start_worker(tap.port, "backlog", "cat")
    try:
        wait_for(lambda: (q := _queue(api_viewer, tap.server, "backlog")) and q["queued"] == 0
                 and q["workers"] == 1, message="drained with one worker")
        wait_for(lambda: Job.objects.filter(server__name=tap.server, function="backlog",
                                            state="completed").count() == 50,
                 message="50 jobs completed")
    finally:
        stop_worker(worker)
    services.refresh_rollups(since=timezone.now() - timedelta(minutes=5))
    row = _queue(api_viewer, tap.server, "backlog")
    assert row["completed_1h"] == 50 and row["failed_1h"] == 0
    assert row["failure_rate_1h"] == 0
    assert row["runtime_p50_ms"] is not None and row["wait_p95_ms"] is not None


def test_worker_appears_with_its_job_then_leaves(tap: Tap, api_viewer: APIClient) -> None:
    worker = start_worker(tap.port, ("sleepy", "other"), "sh", "-c", "sleep 3; cat")
    try:
        def listed():  # type: ignore[no-untyped-def]
            rows = api_viewer.get("/api/v1/workers/", {"server": tap.server}).json()["results"]
            return rows[0] if rows else None

        row = wait_for(listed, message="worker listed")
        assert sorted(row["functions"]) == ["other", "sleepy"]
        assert row["current_job"] is None
        submit_bg(tap.port, "sleepy", "zzz")
        row = wait_for(lambda: (r := listed()) and r["current_job"] and r,
                       message="worker shows its current job")
        job = Job.objects.get(server__name=tap.server, function="sleepy")
        assert row["current_job"]["handle"] == job.handle
        assert row["current_job"]["function"] == "sleepy"
    finally:
        stop_worker(worker)
    wait_for(lambda: not api_viewer.get("/api/v1/workers/", {"server": tap.server}
                                        ).json()["results"],
             message="worker gone after disconnect")


def test_server_up_then_down(tap: Tap, api_viewer: APIClient) -> None:
    def server():  # type: ignore[no-untyped-def]
        rows = api_viewer.get("/api/v1/servers/").json()["results"]
        return next((r for r in rows if r["name"] == tap.server), None)

    row = wait_for(lambda: (s := server()) and s["up"] and s, message="server up")
    assert row["version"].startswith("1.1") and row["pid"]
    tap.gearmand.proc.terminate()
    tap.gearmand.proc.wait()
    row = wait_for(lambda: (s := server()) and not s["up"] and s, message="server down")
    assert row["down_since"] is not None


@pytest.mark.django_db
def test_rollup_percentiles_match_a_direct_computation() -> None:
    """Percentiles merged from minute rows are within one bucket of the exact ones."""
    from jobs.models import Boot, Server

    server = Server.objects.create(name="roll")
    boot = Boot.objects.create(server=server, token="1", first_seen=timezone.now())
    rng = random.Random(7)
    now = timezone.now().replace(second=0, microsecond=0)
    runtimes = []
    jobs = []
    for i in range(3000):
        runtime = int(rng.lognormvariate(4, 1.2)) + 1
        runtimes.append(runtime)
        finished = now - timedelta(minutes=rng.randrange(0, 50), seconds=rng.randrange(60))
        jobs.append(Job(server=server, boot=boot, handle=f"H:r:{i}", function="roll",
                        state="failed" if i % 10 == 0 else "completed",
                        submitted_at=finished - timedelta(milliseconds=runtime + 5),
                        started_at=finished - timedelta(milliseconds=runtime),
                        finished_at=finished, runtime_ms=runtime, wait_ms=5,
                        updated_at=finished))
    Job.objects.bulk_create(jobs)
    services.refresh_rollups(since=now - timedelta(hours=1))
    stats = selectors.queue_stats("roll", 3600, 3600)
    merged = histogram.merge(
        r for r in __import__("monitoring.models", fromlist=["Rollup"]).Rollup.objects
        .filter(function="roll").values_list("runtime_hist", flat=True))
    runtimes.sort()
    for p in (50, 95, 99):
        exact = runtimes[max(0, -(-len(runtimes) * p // 100) - 1)]
        approx = histogram.percentile(merged, p)
        width = 2 ** (1 / histogram.PER_DOUBLING)
        assert exact / width <= approx <= exact * width, (p, exact, approx)
    total = sum(pt["completed"] + pt["failed"] for pt in stats["points"])
    assert total == 3000
    assert sum(pt["failed"] for pt in stats["points"]) == 300
    # recomputing is idempotent
    services.refresh_rollups(since=now - timedelta(hours=1))
    again = selectors.queue_stats("roll", 3600, 3600)
    assert sum(pt["completed"] for pt in again["points"]) == 2700
