"""Recurring schedules (``/api/v1/schedules/``, the Schedules page, ``jobs/schedules/``).

Ticks are driven by the ``now`` given to the scheduler (no waiting for the clock); jobs go
to a real gearmand, and "each tick once" is judged by gearmand's own count of the jobs it
holds and by ``ScheduleRun`` (unique per schedule and tick). DST: a 02:30 schedule in New
York on the spring-forward night runs at 03:00, a 01:30 one on the fall-back night runs
once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from django.db import connection
from django.test import override_settings

from broker.admin import AdminClient
from broker.client import ServerAddress
from hq.models import AuditEntry
from jobs import scheduler
from jobs.models import Job, Schedule, ScheduleRun
from jobs.schedules import services
from tests.support.stack import Gearmand

if TYPE_CHECKING:
    from django.test import Client
    from rest_framework.test import APIClient

NY = "America/New_York"


@pytest.fixture
def gm(gearmand: Gearmand, transactional_db: None) -> Iterator[Gearmand]:
    with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress("gm-r", "127.0.0.1",
                                                             gearmand.port)]):
        yield gearmand


def held(port: int, function: str) -> int:
    with AdminClient("127.0.0.1", port) as admin:
        return sum(s.total for s in admin.status() if s.function == function)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def make(now: datetime, **data: object) -> Schedule:
    values: dict[str, object] = {"name": "s", "function": "tick", "cron": "*/5 * * * *"}
    values.update(data)
    return services.create(data=values, user=None, via="api", now=now)


def test_schedules_api_crud_and_checks(api_operator: APIClient, api_viewer: APIClient,
                                       db: None) -> None:
    r = api_operator.post("/api/v1/schedules/", {
        "name": "Nightly report", "function": "nightly_report", "payload": '{"day": -1}',
        "cron": "0  3 * * *", "timezone": "Europe/Berlin", "overlap": "skip"}, format="json")
    assert r.status_code == 201, r.json()
    body = r.json()
    assert (body["cron"], body["timezone"], body["overlap"], body["enabled"]) == (
        "0 3 * * *", "Europe/Berlin", "skip", True)
    assert body["payload"] == '{"day": -1}' and body["last_job"] is None
    runs = [datetime.fromisoformat(t) for t in body["next_runs"]]
    assert len(runs) == 5 and runs == sorted(runs)
    assert all(t.astimezone(services.zone("Europe/Berlin")).hour == 3 for t in runs)
    sid = body["id"]
    assert api_viewer.get("/api/v1/schedules/").json()["results"][0]["id"] == sid
    assert api_viewer.post("/api/v1/schedules/", {"name": "x"}, format="json").status_code == 403
    assert api_viewer.delete(f"/api/v1/schedules/{sid}/").status_code == 403
    bad = {"cron": ("0 3 * *", "5 fields"), "timezone": ("Mars/Base", "unknown time zone"),
           "overlap": ("never", "allow or skip"), "priority": ("urgent", "priority")}
    for field, (value, words) in bad.items():
        r = api_operator.patch(f"/api/v1/schedules/{sid}/", {field: value}, format="json")
        assert r.status_code == 400, (field, r.json())
        assert words in r.json()["error"]["message"] and field in r.json()["error"]["fields"]
    r = api_operator.post("/api/v1/schedules/", {"name": "Nightly report", "function": "f",
                                                 "cron": "* * * * *"}, format="json")
    assert r.status_code == 409
    r = api_operator.patch(f"/api/v1/schedules/{sid}/", {"enabled": False}, format="json")
    assert r.status_code == 200 and r.json()["next_runs"] == []
    assert Schedule.objects.get(pk=sid).next_run_at is None
    assert api_operator.delete(f"/api/v1/schedules/{sid}/").status_code == 204
    assert api_operator.get(f"/api/v1/schedules/{sid}/").status_code == 404
    assert [e.action for e in AuditEntry.objects.order_by("id")] == [
        "schedule_create", "schedule_update", "schedule_delete"]


def test_each_tick_submits_once(gm: Gearmand) -> None:
    t0 = utc(2026, 6, 1, 12, 1)
    schedule = make(t0)
    assert schedule.next_run_at == utc(2026, 6, 1, 12, 5)
    assert scheduler.submit_due(now=utc(2026, 6, 1, 12, 4, 59)).schedule_runs == 0
    first = scheduler.submit_due(now=utc(2026, 6, 1, 12, 5))
    again = scheduler.submit_due(now=utc(2026, 6, 1, 12, 5, 30))
    assert (first.schedule_runs, again.schedule_runs) == (1, 0)
    assert held(gm.port, "tick") == 1
    schedule.refresh_from_db()
    assert schedule.next_run_at == utc(2026, 6, 1, 12, 10)
    run = ScheduleRun.objects.get(schedule=schedule)
    job = Job.objects.get(pk=run.job_id)
    assert (schedule.last_job_id, job.scheduled_for, job.state) == (job.pk, run.tick, "queued")
    assert job.unique == f"hq-s{schedule.pk}-20260601T120500"


def test_ticks_missed_while_hq_was_down_make_one_run(gm: Gearmand) -> None:
    schedule = make(utc(2026, 6, 1, 12, 1), cron="0 3 * * *")
    tick = scheduler.submit_due(now=utc(2026, 6, 4, 9, 0))  # three 03:00s went by
    assert tick.schedule_runs == 1
    schedule.refresh_from_db()
    assert schedule.next_run_at == utc(2026, 6, 5, 3, 0)
    assert list(ScheduleRun.objects.values_list("tick", flat=True)) == [utc(2026, 6, 2, 3, 0)]


def test_overlap_skip_waits_for_the_previous_run_and_allow_does_not(gm: Gearmand) -> None:
    t0 = utc(2026, 6, 1, 12, 1)
    skip = make(t0, name="skip", function="slow_skip", overlap="skip")
    allow = make(t0, name="allow", function="slow_allow", overlap="allow")
    for minute in (5, 10, 15):  # no worker: every run stays queued
        scheduler.submit_due(now=utc(2026, 6, 1, 12, minute))
    assert held(gm.port, "slow_skip") == 1
    assert held(gm.port, "slow_allow") == 3
    notes = list(ScheduleRun.objects.filter(schedule=skip).order_by("tick")
                 .values_list("skipped", flat=True))
    first_job = ScheduleRun.objects.filter(schedule=skip).order_by("tick")[0].job_id
    assert notes == ["", f"the previous run (job {first_job}) is still queued"] * 1 + [
        f"the previous run (job {first_job}) is still queued"]
    assert ScheduleRun.objects.filter(schedule=allow, skipped="").count() == 3
    # once the previous run is over, the next tick runs again
    Job.objects.filter(pk=first_job).update(state="completed")
    scheduler.submit_due(now=utc(2026, 6, 1, 12, 20))
    assert held(gm.port, "slow_skip") == 2
    assert AuditEntry.objects.filter(action="schedule_skip").count() == 2


def test_dst_changes_follow_debian_crons_rules(gm: Gearmand) -> None:
    # spring forward in New York: 2026-03-08 02:00 EST → 03:00 EDT; 02:30 does not exist
    spring = make(utc(2026, 3, 7, 0, 0), name="spring", function="dst_spring",
                  cron="30 2 * * *", timezone=NY)
    fired = []
    for _ in range(3):
        due = Schedule.objects.get(pk=spring.pk).next_run_at
        assert due is not None
        fired.append(due)
        scheduler.submit_due(now=due)
    assert fired == [utc(2026, 3, 7, 7, 30),    # 02:30 EST
                     utc(2026, 3, 8, 7, 0),     # 03:00 EDT: the first minute that exists
                     utc(2026, 3, 9, 6, 30)]    # 02:30 EDT
    services.update(schedule_id=spring.pk, data={"enabled": False}, user=None, via="api")
    # fall back: 2026-11-01 02:00 EDT → 01:00 EST; 01:30 happens twice and runs once
    fall = make(utc(2026, 10, 31, 12, 0), name="fall", function="dst_fall",
                cron="30 1 * * *", timezone=NY)
    fired = []
    for _ in range(3):
        due = Schedule.objects.get(pk=fall.pk).next_run_at
        assert due is not None
        fired.append(due)
        scheduler.submit_due(now=due)
    assert fired == [utc(2026, 11, 1, 5, 30),   # 01:30 EDT, the first of the two
                     utc(2026, 11, 2, 6, 30),   # 01:30 EST the next day
                     utc(2026, 11, 3, 6, 30)]
    assert held(gm.port, "dst_spring") == 3 and held(gm.port, "dst_fall") == 3


def test_two_schedulers_race_and_each_tick_runs_once(gm: Gearmand) -> None:
    t0 = utc(2026, 6, 1, 12, 0, 30)
    for n in range(30):
        make(t0, name=f"s{n}", function="race_sched", cron="* * * * *")
    start = threading.Barrier(2)

    def run() -> None:
        try:
            start.wait()
            scheduler.submit_due(now=utc(2026, 6, 1, 12, 1))
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert ScheduleRun.objects.count() == 30
    assert held(gm.port, "race_sched") == 30


def test_the_schedules_page_previews_next_runs_and_saves(operator: Client,
                                                         viewer: Client, db: None) -> None:
    r = operator.get("/schedules/preview/?cron=0+3+*+*+*&timezone=Asia/Tokyo")
    html = r.content.decode()
    assert r.status_code == 200 and html.count("<li>") == 5 and "03:00" in html
    assert "Asia/Tokyo" in html and "UTC" in html
    bad = operator.get("/schedules/preview/?cron=0+3+*&timezone=UTC").content.decode()
    assert "cron must have 5 fields" in bad
    r = operator.post("/schedules/", {"name": "Tokyo report", "function": "report",
                                      "cron": "0 3 * * *", "timezone": "Asia/Tokyo",
                                      "priority": "normal", "overlap": "skip",
                                      "enabled": "on", "payload": "x"})
    assert r.status_code == 302, r.content.decode()[:3000]
    schedule = Schedule.objects.get(name="Tokyo report")
    assert r["Location"] == f"/schedules/{schedule.pk}/"
    page = operator.get(r["Location"]).content.decode()
    assert "Schedule “Tokyo report” created." in page and "No runs yet." in page
    r = operator.post("/schedules/", {"name": "broken", "function": "report",
                                      "cron": "61 * * * *", "timezone": "UTC",
                                      "priority": "normal", "overlap": "allow"})
    assert r.status_code == 400 and "Bad minute" in r.content.decode()
    assert viewer.get("/schedules/").status_code == 200
    assert "Create schedule" not in viewer.get("/schedules/").content.decode()
    assert viewer.post("/schedules/", {"name": "x"}).status_code == 403
    assert viewer.post(f"/schedules/{schedule.pk}/delete/").status_code == 403
    assert operator.post(f"/schedules/{schedule.pk}/delete/").status_code == 302
    assert not Schedule.objects.exists()
