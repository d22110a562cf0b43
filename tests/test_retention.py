"""Retention: old event partitions dropped whole, old finished jobs and batch ids deleted
in bounded batches, open jobs kept whatever their age; a busy partition waits for the next
run instead of blocking the ingest writer."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta
from io import StringIO
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from jobs import retention
from jobs.ingest import conninfo_from_settings
from jobs.models import Boot, IngestBatch, Job, JobEvent, Server


def _day(dt: datetime) -> str:
    return f"jobs_jobevent_{dt:%Y%m%d}"


def _event(boot: Boot, at: datetime, handle: str, *, partition: bool = True) -> None:
    with connection.cursor() as cur:
        if partition:
            cur.execute("SELECT hq_ensure_event_partition(%s::date)", [at.date()])
        cur.execute(
            "INSERT INTO jobs_jobevent (id, at, server_id, boot_id, handle, kind) "
            "VALUES (%s, %s, %s, %s, %s, 'submitted')",
            [uuid.uuid4(), at, boot.server_id, boot.id, handle])


def _job(boot: Boot, handle: str, state: str, at: datetime, *, finished: bool = True) -> Job:
    return Job.objects.create(server=boot.server, boot=boot, handle=handle, function="f",
                              state=state, submitted_at=at, updated_at=at,
                              finished_at=at if finished else None)


def _partitions() -> set[str]:
    return set(retention.event_partitions_before((timezone.now() + timedelta(days=2)).date()))


@pytest.fixture
def boot(db: None) -> Boot:
    server = Server.objects.create(name=f"ret-{uuid.uuid4().hex[:6]}")
    return Boot.objects.create(server=server, token="1", first_seen=timezone.now())


def test_old_history_goes_open_jobs_and_recent_history_stay(boot: Boot) -> None:
    now = timezone.now()
    old, older = now - timedelta(days=40), now - timedelta(days=35)
    recent = now - timedelta(hours=1)
    for at, handle in ((old, "H:x:1"), (older, "H:x:2"), (recent, "H:x:3")):
        _event(boot, at, handle)
    _event(boot, old - timedelta(days=400), "H:x:0", partition=False)  # lands in DEFAULT
    _job(boot, "H:x:1", "completed", old)
    _job(boot, "H:x:2", "failed", older)
    _job(boot, "H:x:4", "lost", old, finished=False)  # finished state, no end time
    running = _job(boot, "H:x:5", "running", old, finished=False)
    queued = _job(boot, "H:x:6", "queued", old, finished=False)
    kept = _job(boot, "H:x:3", "completed", recent)
    retry = _job(boot, "H:x:7", "completed", recent)
    retry.retry_of = Job.objects.get(handle="H:x:1")
    retry.save()
    for at in (old, old, recent):
        IngestBatch.objects.create(id=uuid.uuid4(), server=boot.server, events=1, written_at=at)

    lines: list[str] = []
    pruned = retention.apply_retention(days=30, batch=1, progress=lines.append)

    # (other tests may leave old day partitions behind: those go too, never a recent one)
    assert {_day(old), _day(older)} <= set(pruned.partitions)
    assert all(name < _day(now - timedelta(days=30)) for name in pruned.partitions)
    assert _day(old) not in _partitions() and _day(recent) in _partitions()
    assert pruned.stray_events == 1
    assert set(JobEvent.objects.filter(boot=boot).values_list("handle", flat=True)) == {"H:x:3"}
    assert pruned.jobs == 3
    assert set(Job.objects.filter(boot=boot).values_list("id", flat=True)) == {
        running.id, queued.id, kept.id, retry.id}
    retry.refresh_from_db()
    assert retry.retry_of is None
    assert pruned.batch_ids == 2 and IngestBatch.objects.filter(server=boot.server).count() == 1
    assert any("finished jobs: 3 deleted" in line for line in lines)  # batches of 1 add up
    # a second run finds nothing more
    again = retention.apply_retention(days=30)
    assert (again.partitions, again.stray_events, again.jobs, again.batch_ids) == ([], 0, 0, 0)


def test_prune_command_says_what_it_removed(boot: Boot) -> None:
    old = timezone.now() - timedelta(days=10)
    _event(boot, old, "H:y:1")
    _job(boot, "H:y:1", "completed", old)
    out = StringIO()
    call_command("hq_prune", "--days", "7", stdout=out)
    text = out.getvalue()
    assert f"event partition {_day(old)}: dropped" in text
    assert "1 event partitions dropped" in text and "1 jobs" in text


@pytest.mark.parametrize("args", [["--days", "0"], ["--batch", "0"]])
def test_prune_command_refuses_nonsense(db: None, args: list[str]) -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("hq_prune", *args)


def test_storage_reports_size_and_oldest_day(boot: Boot) -> None:
    at = timezone.now() - timedelta(days=3)
    _event(boot, at, "H:z:1")
    info = retention.storage()
    assert info["database_bytes"] > 0  # type: ignore[operator]
    assert info["oldest_event_day"] <= at.date()  # type: ignore[operator]


@pytest.mark.django_db(transaction=True)
def test_a_partition_the_writer_holds_is_left_for_the_next_run() -> None:
    server = Server.objects.create(name=f"busy-{uuid.uuid4().hex[:6]}")
    boot = Boot.objects.create(server=server, token="1", first_seen=timezone.now())
    old = timezone.now() - timedelta(days=50)
    _event(boot, old, "H:b:1")
    locked, release = threading.Event(), threading.Event()

    def writer_mid_batch() -> None:  # what the ingest writer holds during a COPY batch
        with psycopg.connect(conninfo_from_settings()) as conn:
            conn.execute("LOCK TABLE jobs_jobevent IN ROW EXCLUSIVE MODE")
            locked.set()
            release.wait(30)

    thread = threading.Thread(target=writer_mid_batch)
    thread.start()
    try:
        assert locked.wait(10)
        busy = retention.apply_retention(days=30)
        assert _day(old) in busy.busy_partitions and _day(old) not in busy.partitions
    finally:
        release.set()
        thread.join(30)
    done = retention.apply_retention(days=30)
    assert _day(old) in done.partitions and not done.busy_partitions


def test_the_overview_says_how_much_history_is_kept(boot: Boot, viewer: Any) -> None:
    _event(boot, timezone.now() - timedelta(days=2), "H:o:1")
    html = viewer.get("/").content.decode()
    line = html.split('id="history-kept"', 1)[1].split("</p>", 1)[0]
    assert "History kept 30 days" in line and "events since" in line
    assert " · database " in line and "B" in line  # a size: KiB, MiB or GiB
    # the live fragment does not recompute it
    assert 'id="history-kept"' not in viewer.get("/", HTTP_HX_REQUEST="true").content.decode()
