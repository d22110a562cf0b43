"""Background jobs that survive a gearmand restart through its persistent queue
(``-q Postgres``): gearmand gives them back under new handles; HQ links each restored job
to its earlier record (one history, neither of them ``lost``), and keeps ``lost`` for what
gearmand without a queue really lost. Real gearmand 1.1.20, the gearman CLI as client and
worker, HQ's capture tap, HQ's recovery sweep."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client

from broker.client import NotAcknowledged, ServerAddress, submit_first
from jobs import gearmand_queue, restored
from jobs.models import Job, State
from jobs.recovery import engine, policies
from tests.support.gearman_cli import gearman, start_worker, stop_worker, submit_bg
from tests.support.stack import Gearmand, jobs_of, start_tap, wait_for, wait_jobs

pytestmark = pytest.mark.gearmand


def queue_options(*, prepared: bool = False) -> tuple[str, ...]:
    """gearmand's libpq queue in the test database, in a table of its own: made by gearmand,
    or (``prepared``) beforehand as ``make run`` makes it (``jobs/gearmand_queue.py``)."""
    s = connection.settings_dict
    conninfo = " ".join(f"{k}={v}" for k, v in (
        ("host", s["HOST"]), ("port", s["PORT"]), ("user", s["USER"]),
        ("password", s["PASSWORD"]), ("dbname", s["NAME"])) if v)
    table = f"gearmand_queue_{uuid.uuid4().hex[:8]}"
    if prepared:
        gearmand_queue.prepare(conninfo, table)
    return ("-q", "Postgres", "--libpq-conninfo", conninfo, "--libpq-table", table)


def warm_up(g: Gearmand, function: str) -> None:
    """Three jobs run to the end first, so the queued ones' handles (4, 5, …) are not the
    ones gearmand gives them back under (1, 2, …)."""
    for i in range(3):
        submit_bg(g.port, function, f"warm {i}")
    worker = start_worker(g.port, function, "cat", jobs=3)
    try:
        worker.wait(20)
    finally:
        stop_worker(worker)


def lost_policy() -> None:
    """A policy that would retry lost jobs: a restored job must not be run twice."""
    policies.create(data={"function": "restore_*", "max_attempts": 3, "backoff_base_s": 1,
                          "backoff_max_s": 1, "retry_on": ["lost"]}, user=None, via="cli")


@pytest.mark.parametrize("sweep_first", [True, False], ids=["swept", "linked-from-lost"])
def test_jobs_restored_by_gearmand_queue_keep_one_history_and_are_never_lost(
        gearmand_factory: Callable[..., Gearmand], tmp_path: Path, transactional_db: None,
        monkeypatch: pytest.MonkeyPatch, viewer: Client, sweep_first: bool) -> None:
    monkeypatch.setattr(engine, "GRACE", timedelta(0))
    lost_policy()
    g = gearmand_factory(*queue_options())
    tap = start_tap("capture", g, tmp_path)
    server = tap.server
    try:
        warm_up(g, "restore_warm")
        for payload in ("alpha", "beta", "gamma"):
            submit_bg(g.port, "restore_me", payload)
        # the same payload as another job, its own unique key: each pairs with its own
        gearman(g.port, "-b", "-f", "restore_me", "-u", "u-explicit", "alpha")
        before = {j.pk: j for j in wait_jobs(server, 4, state="queued")
                  if j.function == "restore_me"}
        assert len(before) == 4 and all(j.unique for j in before.values())

        old_pid = g.proc.pid
        g.restart()
        assert g.proc.pid != old_pid
        wait_for(lambda: jobs_of(server).filter(pk__in=before, state="lost").count() == 4,
                 timeout=30, message="the restart recorded")
        if sweep_first:
            # before any worker takes them: gearmand holds them again (show unique jobs),
            # so the sweep records them restored — not lost, and the lost policy retries
            # none of them
            sweep = engine.sweep()
            assert (sweep.restored, sweep.retried) == (4, 0), sweep
            assert set(Job.objects.filter(pk__in=before).values_list("state", flat=True)) \
                == {State.RESTORED}
            assert not Job.objects.filter(retry_of__in=before).exists()

        worker = start_worker(g.port, "restore_me", "cat", jobs=4)
        try:
            worker.wait(30)
        finally:
            stop_worker(worker)

        def linked() -> list[Job] | None:
            rows = list(jobs_of(server).filter(restored_from__in=before, state="completed"))
            return rows if len(rows) == 4 else None

        after = wait_for(linked, timeout=30, message="four restored jobs run and linked")
        for new in after:
            old = before[new.restored_from_id]
            assert (new.function, new.unique, new.payload) == (old.function, old.unique,
                                                                 old.payload)
            assert new.boot_id != old.boot_id and new.handle != old.handle
            assert new.submitted_at is None  # gearmand gave it back: no client submitted it
            old.refresh_from_db()
            assert old.state == State.RESTORED and new.handle in old.error
        assert not jobs_of(server).filter(state="lost").exists()
        assert not Job.objects.filter(retry_of__in=before).exists()  # nothing ran twice
        assert engine.sweep().retried == 0

        # the job page: one history, linked both ways
        new = after[0]
        old_pk = new.restored_from_id
        page = viewer.get(f"/jobs/{new.pk}/").content.decode()
        assert "survived a gearmand restart at" in page.lower()
        assert f'href="/jobs/{old_pk}/"' in page
        page = viewer.get(f"/jobs/{old_pk}/").content.decode()
        assert f'href="/jobs/{new.pk}/"' in page and "restored" in page
        assert [r.pk for r in restored.history(new)] == [old_pk, new.pk]
    finally:
        tap.stop()


def test_without_a_queue_a_restart_loses_the_job_and_nothing_is_linked_to_it(
        gearmand: Gearmand, tmp_path: Path, transactional_db: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "GRACE", timedelta(0))
    lost_policy()
    tap = start_tap("capture", gearmand, tmp_path)
    server = tap.server
    try:
        warm_up(gearmand, "restore_warm")
        submit_bg(gearmand.port, "restore_gone", "delta")
        hq_submit(gearmand.port, "restore_gone_too", "no unique key")
        job, other = wait_jobs(server, 2, state="queued")
        gearmand.restart()
        wait_for(lambda: Job.objects.filter(pk__in=[job.pk, other.pk], state="lost")
                 .count() == 2, timeout=30, message="the restart recorded")
        # really lost: gearmand holds neither key nor any job of their functions
        sweep = engine.sweep()
        assert (sweep.restored, sweep.retried, len(sweep.deferred)) == (0, 2, 0), sweep
        # the same function and payload submitted again after the restart is a new job
        submit_bg(gearmand.port, "restore_gone", "delta")
        worker = start_worker(gearmand.port, "restore_gone", "cat", jobs=1)
        try:
            worker.wait(30)
        finally:
            stop_worker(worker)
        wait_for(lambda: jobs_of(server).filter(function="restore_gone",
                                                state="completed").exists(),
                 timeout=30, message="the new job run")
        job.refresh_from_db()
        assert job.state == State.LOST and job.error.startswith(restored.RESTART)
        assert not Job.objects.filter(restored_from=job.pk).exists()
    finally:
        tap.stop()


def test_a_restart_while_no_tap_watched_is_linked_when_the_tap_is_back(
        gearmand_factory: Callable[..., Gearmand], tmp_path: Path, transactional_db: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "GRACE", timedelta(0))
    g = gearmand_factory(*queue_options())
    tap = start_tap("capture", g, tmp_path)
    server = tap.server
    try:
        warm_up(g, "restore_warm")
        submit_bg(g.port, "restore_unseen", "epsilon")
        (old,) = wait_jobs(server, 1, state="queued")
    finally:
        tap.stop()
    g.restart()  # nobody records it
    again = start_tap("capture", g, tmp_path, server=server)
    try:
        # the tap's start-up closes the earlier boot's open jobs ("gearmand restarted
        # while HQ was not watching"); gearmand holds the job again: restored, not lost
        wait_for(lambda: Job.objects.get(pk=old.pk).state == "lost", timeout=30,
                 message="the earlier boot closed")
        assert engine.sweep().restored == 1
        worker = start_worker(g.port, "restore_unseen", "cat", jobs=1)
        try:
            worker.wait(30)
        finally:
            stop_worker(worker)
        new = wait_for(lambda: Job.objects.filter(restored_from=old.pk,
                                                  state="completed").first(),
                       timeout=30, message="the restored job linked")
        assert new.payload == "epsilon" and new.unique == old.unique
        assert Job.objects.get(pk=old.pk).state == State.RESTORED
    finally:
        again.stop()


def hq_submit(port: int, function: str, payload: str) -> str:
    """A background job as HQ's own client sends it: no unique key."""
    conn, handle = submit_first([ServerAddress("g", "127.0.0.1", port)], function,
                                payload.encode(), pool=None)
    conn.close()
    return handle


def test_jobs_without_a_unique_key_need_make_runs_table_and_link_by_payload(
        gearmand_factory: Callable[..., Gearmand], tmp_path: Path, transactional_db: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "GRACE", timedelta(0))
    lost_policy()
    # gearmand's own table refuses a second queued job of a function with no unique key
    plain = gearmand_factory(*queue_options())
    hq_submit(plain.port, "restore_plain", "one")
    with pytest.raises(NotAcknowledged, match="QUEUE_ERROR"):
        hq_submit(plain.port, "restore_plain", "two")

    g = gearmand_factory(*queue_options(prepared=True))
    tap = start_tap("capture", g, tmp_path)
    server = tap.server
    try:
        warm_up(g, "restore_warm")
        for payload in ("zeta", "eta", "eta"):  # two equal jobs: each pairs with one
            hq_submit(g.port, "restore_plain", payload)
        before = {j.pk for j in wait_jobs(server, 3, state="queued")}
        assert set(jobs_of(server).filter(pk__in=before).values_list("unique", flat=True)) \
            == {""}
        g.restart()
        wait_for(lambda: jobs_of(server).filter(pk__in=before, state="lost").count() == 3,
                 timeout=30, message="the restart recorded")
        # no unique key to ask gearmand about, but it holds three restore_plain jobs HQ
        # has no record of: they wait, undecided, rather than being retried
        sweep = engine.sweep()
        assert (sweep.retried, sweep.restored, len(sweep.deferred)) == (0, 0, 3), sweep
        worker = start_worker(g.port, "restore_plain", "cat", jobs=3)
        try:
            worker.wait(30)
        finally:
            stop_worker(worker)
        def linked() -> list[Job] | None:
            rows = list(jobs_of(server).filter(restored_from__in=before, state="completed"))
            return rows if len(rows) == 3 else None

        after = wait_for(linked, timeout=30, message="three restored jobs run and linked")
        assert sorted(j.payload for j in after) == ["eta", "eta", "zeta"]
        for new in after:
            assert new.payload == Job.objects.get(pk=new.restored_from_id).payload
        assert set(Job.objects.filter(pk__in=before).values_list("state", flat=True)) == {
            State.RESTORED}
        assert engine.sweep().retried == 0 and not Job.objects.filter(
            retry_of__in=before).exists()
    finally:
        tap.stop()
