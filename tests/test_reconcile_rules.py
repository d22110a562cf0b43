"""Which open jobs gearmand's `show jobs` list may judge (jobs/reconcile.py): only jobs of
the server, open, first seen well before the list was taken, and not in it; every open job
of another boot (that gearmand is gone)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from jobs.models import Boot, Job, Server
from jobs.reconcile import ENDED_UNSEEN, RESTARTED, caught_up, unheld_jobs, unrecorded
from tests.support.worlds import add_job

pytestmark = pytest.mark.django_db


def test_only_old_enough_open_jobs_missing_from_the_list_are_judged() -> None:
    listed = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    server = Server.objects.create(name="recon")
    other = Server.objects.create(name="recon-other")
    boot = Boot.objects.create(server=server, token="700", first_seen=listed - timedelta(days=1))
    old_boot = Boot.objects.create(server=server, token="650",
                                   first_seen=listed - timedelta(days=2))
    other_boot = Boot.objects.create(server=other, token="700", first_seen=listed)
    long_ago = listed - timedelta(minutes=5)
    add_job(boot, "H:h:1", state="queued", submitted_at=long_ago)  # ended unseen
    add_job(boot, "H:h:2", state="running", submitted_at=long_ago)  # still held
    add_job(boot, "H:h:3", state="queued", submitted_at=listed - timedelta(seconds=1))  # new
    add_job(boot, "H:h:4", state="completed", submitted_at=long_ago)  # ended, recorded
    add_job(boot, "H:h:5", state="running", submitted_at=None, started_at=long_ago)
    add_job(old_boot, "H:h:1", state="running", submitted_at=long_ago)  # old gearmand
    add_job(other_boot, "H:h:9", state="queued", submitted_at=long_ago)  # not this server
    Job.objects.create(server=server, boot=None, handle="H:h:8", state="queued",
                       submitted_at=long_ago, updated_at=long_ago)  # HQ's own, tap row due

    found = unheld_jobs("recon", held={"H:h:2"}, listed_at=listed.timestamp(), boot="700")
    assert {(u.boot, u.handle, u.reason) for u in found} == {
        ("700", "H:h:1", ENDED_UNSEEN), ("700", "H:h:5", ENDED_UNSEEN),
        ("650", "H:h:1", RESTARTED)}


def test_the_list_is_used_only_once_the_writer_has_caught_up_with_it() -> None:
    listed = timezone.now().timestamp()
    assert caught_up(None, listed)  # nothing pending
    assert caught_up(listed + 0.5, listed)  # only newer events pending
    assert not caught_up(listed - 0.5, listed)  # an older event not yet written


def test_numbers_missing_between_recorded_jobs_are_the_jobs_hq_missed() -> None:
    listed = timezone.now()
    server = Server.objects.create(name="gaps")
    boot = Boot.objects.create(server=server, token="800", first_seen=listed - timedelta(1))
    earlier = listed - timedelta(minutes=2)
    for n in (1, 2, 6):
        add_job(boot, f"H:g:{n}", submitted_at=earlier + timedelta(seconds=n))
    add_job(boot, "H:g:7", submitted_at=None, started_at=earlier)  # seen from its start
    add_job(boot, "H:g:12", submitted_at=listed)  # too new to vouch for 8-11

    gaps = unrecorded("gaps", boot="800", held={"H:g:4"}, listed_at=listed.timestamp(),
                      after=None)
    assert gaps.handles == ["H:g:3", "H:g:5"] and gaps.mark == 6  # 4: gearmand still has it
    again = unrecorded("gaps", boot="800", held=set(), listed_at=listed.timestamp(),
                       after=gaps.mark)
    assert again.handles == [] and again.mark == 6
    other_boot = unrecorded("gaps", boot="801", held=set(), listed_at=listed.timestamp(),
                            after=None)
    assert other_boot.handles == []
