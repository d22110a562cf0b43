"""Open jobs checked against gearmand's own list (``show jobs``): a job that ended while no
tap was recording is marked ``lost`` with the reason once a tap is back, and a job gearmand
still holds stays as it was. Capture and proxy, a real gearmand and the gearman CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.admin import AdminClient
from jobs.reconcile import ENDED_UNSEEN, NOT_RECORDED
from tests.support.gearman_cli import start_worker, stop_worker, submit_bg
from tests.support.stack import Gearmand, events_of, jobs_of, start_tap, wait_for, wait_jobs

pytestmark = pytest.mark.gearmand


def held_by(g: Gearmand) -> set[str]:
    with AdminClient("127.0.0.1", g.port) as admin:
        return admin.show_jobs()


@pytest.mark.parametrize("mode", ["capture", "proxy"])
def test_job_that_ended_while_the_tap_was_down_is_lost_the_held_one_stays_queued(
        gearmand: Gearmand, tmp_path: Path, transactional_db: None, mode: str) -> None:
    tap = start_tap(mode, gearmand, tmp_path)
    server = tap.server
    try:
        submit_bg(tap.port, "recon_done", "a")
        submit_bg(tap.port, "recon_waits", "b")
        wait_jobs(server, 2, state="queued")
    finally:
        tap.stop()
    done, waits = sorted(jobs_of(server), key=lambda j: j.function)
    assert held_by(gearmand) == {done.handle, waits.handle}

    worker = start_worker(gearmand.port, "recon_done", "cat", jobs=1)  # while HQ is away
    try:
        wait_for(lambda: held_by(gearmand) == {waits.handle}, message="the job run unseen")
    finally:
        stop_worker(worker)

    again = start_tap(mode, gearmand, tmp_path, server=server)
    try:
        wait_for(lambda: jobs_of(server).get(pk=done.pk).state == "lost", timeout=30,
                 message="the job gearmand no longer holds recorded lost")
        done.refresh_from_db()
        assert done.error == ENDED_UNSEEN
        assert [e.kind for e in events_of(done)][-1] == "lost"
        waits.refresh_from_db()
        assert waits.state == "queued"  # gearmand still holds it: never judged lost
        wait_for(lambda: "1 open jobs are no longer held by gearmand" in again.output(),
                 message="the tap saying what it did")
    finally:
        again.stop()


@pytest.mark.parametrize("mode", ["capture", "proxy"])
def test_jobs_that_began_and_ended_while_no_tap_ran_are_recorded_lost(
        gearmand: Gearmand, tmp_path: Path, transactional_db: None, mode: str) -> None:
    tap = start_tap(mode, gearmand, tmp_path)
    server = tap.server
    # the worker talks to gearmand itself: in proxy mode HQ sees only the submits
    worker = start_worker(gearmand.port, "recon_unseen", "cat")
    try:
        try:
            submit_bg(tap.port, "recon_unseen", "before")
            wait_jobs(server, 1)
        finally:
            tap.stop()
        for i in range(3):  # straight to gearmand: no tap records these
            submit_bg(gearmand.port, "recon_unseen", f"unseen {i}")
        wait_for(lambda: held_by(gearmand) == set(), message="the three run unseen")
        again = start_tap(mode, gearmand, tmp_path, server=server)
        try:
            submit_bg(again.port, "recon_unseen", "after")
            lost = wait_for(lambda: list(jobs_of(server).filter(error=NOT_RECORDED)) or None,
                            timeout=30, message="the missed jobs recorded lost")
            (first,) = jobs_of(server).filter(payload_text="before")
            number = int(first.handle.rsplit(":", 1)[1])
            prefix = first.handle.rsplit(":", 1)[0]
            assert sorted(j.handle for j in lost) == [f"{prefix}:{number + i}"
                                                        for i in (1, 2, 3)]
            assert {j.state for j in lost} == {"lost"} and {j.function for j in lost} == {""}
            wait_jobs(server, 5)
            if mode == "capture":  # the two jobs HQ saw run are untouched
                assert jobs_of(server).filter(state="completed").count() == 2
        finally:
            again.stop()
    finally:
        stop_worker(worker)
