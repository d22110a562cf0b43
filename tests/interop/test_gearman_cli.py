"""The gearman CLI (gearman-tools, libgearman) through HQ's tap, in capture and proxy mode."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.support.gearman_cli import gearman, start_worker, stop_worker
from tests.support.stack import Gearmand, Tap, events_of, start_tap, wait_for, wait_jobs

pytestmark = pytest.mark.gearmand


def test_foreground_jobs_are_recorded_and_replies_unchanged(tap: Tap) -> None:
    worker = start_worker(tap.port, "rev", "rev")
    try:
        replies = [gearman(tap.port, "-f", "rev", stdin=f"order {i}\n") for i in range(3)]
    finally:
        stop_worker(worker)
    assert replies == [f"{i} redro\n" for i in range(3)]
    jobs = wait_jobs(tap.server, 3, state="completed")
    assert [j.payload for j in jobs] == [f"order {i}\n" for i in range(3)]
    assert [j.result for j in jobs] == [f"{i} redro\n" for i in range(3)]
    for job in jobs:
        assert job.function == "rev"
        assert job.background is False
        assert job.attempts == 1
        assert job.worker  # the worker's address (the CLI sets no client id)
        assert job.runtime_ms is not None and job.runtime_ms >= 0
        assert job.wait_ms is not None and job.wait_ms >= 0
        assert job.handle.startswith("H:")
        assert job.clients == 1


def test_background_job_waits_in_queue_until_a_worker_comes(tap: Tap) -> None:
    gearman(tap.port, "-b", "-f", "slowq", "payload-1")
    (queued,) = wait_jobs(tap.server, 1, state="queued")
    assert queued.background is True and queued.started_at is None
    time.sleep(0.3)
    worker = start_worker(tap.port, "slowq", "cat")
    try:
        (done,) = wait_jobs(tap.server, 1, state="completed")
    finally:
        stop_worker(worker)
    assert done.id == queued.id
    assert done.result == "payload-1"
    assert done.wait_ms is not None and done.wait_ms >= 300


def test_worker_failure_is_recorded_as_failed(tap: Tap) -> None:
    worker = start_worker(tap.port, "boom", "false")
    try:
        with pytest.raises(subprocess.CalledProcessError):
            gearman(tap.port, "-f", "boom", stdin="x")
        (job,) = wait_jobs(tap.server, 1, state="failed")
    finally:
        stop_worker(worker)
    assert job.error
    assert job.finished_at is not None


def test_two_clients_with_the_same_unique_share_one_job(tap: Tap) -> None:
    gearman(tap.port, "-b", "-u", "same-key", "-f", "dedupe", "first")
    gearman(tap.port, "-b", "-u", "same-key", "-f", "dedupe", "second")
    (job,) = wait_jobs(tap.server, 1)
    wait_for(lambda: type(job).objects.get(pk=job.pk).clients == 2, message="clients=2")
    job.refresh_from_db()
    assert job.unique == "same-key" and job.payload == "first"
    assert [e.kind for e in events_of(job)] == ["submitted", "attached"]


def test_jobs_left_open_by_an_earlier_gearmand_are_lost_when_a_tap_starts(
        gearmand: Gearmand, tmp_path: Path, transactional_db: None) -> None:
    """A job queued under a gearmand that is gone (another pid) cannot still be queued."""
    from django.utils import timezone

    from jobs.models import Boot, Job, Server

    server = Server.objects.create(name="restarted-unseen")
    old = Boot.objects.create(server=server, token="1", first_seen=timezone.now())
    stale = Job.objects.create(server=server, boot=old, handle="H:old:7", function="f",
                               state="queued", submitted_at=timezone.now(),
                               updated_at=timezone.now())
    tap = start_tap("capture", gearmand, tmp_path, server="restarted-unseen")
    try:
        wait_for(lambda: Job.objects.get(pk=stale.pk).state == "lost", message="lost")
    finally:
        tap.stop()
    stale.refresh_from_db()
    assert "not watching" in stale.error and stale.finished_at is not None
    assert [e.kind for e in events_of(stale)] == ["lost"]
