"""A gearmand restart first seen at an assignment (found by ``bench/faults.py --short``).

The new gearmand's first JOB_ASSIGN_UNIQ (handle 1) reached the tracker before its
JOB_CREATED: the job was filed under the old boot, over the old boot's finished job of the
same handle. An assignment is no evidence of order (a backlog is handed out long after it
was created), so only a handle known to be used already may start a boot there.
"""

from __future__ import annotations

from broker.protocol import req, res

from .wire import FN, T, Wire


def old_boot(w: Wire, top: int = 60) -> None:
    """A boot HQ watched from its first job: H:x:1 ran and finished, jobs up to ``top``
    were created, the last one is still queued."""
    client, worker = w.open(4001), w.open(4002)
    w.submit(client, "H:x:1", ptype=T.SUBMIT_JOB_BG, unique=b"old-1")
    w.assign(worker, "H:x:1", unique=b"old-1")
    w.send(worker, req(T.WORK_COMPLETE, b"H:x:1", b"done"))
    for n in range(2, top + 1):
        w.submit(client, f"H:x:{n}", ptype=T.SUBMIT_JOB_BG, unique=b"old-%d" % n)
        if n < top:
            w.assign(worker, f"H:x:{n}", unique=b"old-%d" % n)
            w.send(worker, req(T.WORK_COMPLETE, f"H:x:{n}".encode(), b"done"))
    w.close(client)
    w.close(worker)


def test_first_assignment_of_a_new_gearmand_starts_its_boot() -> None:
    w = Wire()
    old_boot(w)
    # gearmand restarted; a client and a worker reconnect, the worker is quicker
    client, worker = w.open(4003, from_start=True), w.open(4004, from_start=True)
    w.send(client, req(T.SUBMIT_JOB_BG, FN, b"new-1", b"payload"))
    t_start = w.assign(worker, "H:x:1", unique=b"new-1", payload=b"payload")
    w.reply(client, res(T.JOB_CREATED, b"H:x:1"))
    w.send(worker, req(T.WORK_COMPLETE, b"H:x:1", b"new result"))

    assert w.tracker.boot == "123.1"
    old = [e.kind for e in w.events if e.handle == "H:x:1" and e.boot == "123"]
    assert old == ["submitted", "started", "completed"]  # the finished job is untouched
    new = [(e.kind, e.unique) for e in w.events if e.boot == "123.1"]
    assert new == [("started", "new-1"), ("submitted", "new-1"), ("completed", None)]
    (lost,) = w.of("lost")  # only the old boot's job still queued
    assert (lost.handle, lost.boot, lost.ts) == ("H:x:60", "123", t_start)
    assert w.tracker.counters["forged"] == 0 and w.tracker.counters["boots"] == 1


def test_a_finished_handle_assigned_for_another_function_is_a_new_boot() -> None:
    w = Wire()
    client, worker = w.open(4001), w.open(4002)
    w.submit(client, "H:x:1", ptype=T.SUBMIT_JOB_BG, fn=b"resize")
    w.assign(worker, "H:x:1", fn=b"resize")
    w.send(worker, req(T.WORK_COMPLETE, b"H:x:1", b""))
    w.submit(client, "H:x:2", ptype=T.SUBMIT_JOB_BG, fn=b"resize")  # queued
    # a handful of jobs only: the counter says nothing, the handle does
    w.reply(worker, res(T.JOB_ASSIGN, b"H:x:1", b"thumbnail", b"p"))
    assert w.tracker.boot == "123.1"
    assert [(e.kind, e.handle, e.boot) for e in w.events[-2:]] == [
        ("lost", "H:x:2", "123"), ("started", "H:x:1", "123.1")]


def test_plain_job_assign_of_handle_1_after_the_counter_went_on_is_a_new_boot() -> None:
    """JOB_ASSIGN carries no unique key and the function is the same: the counter tells."""
    w = Wire()
    old_boot(w)
    worker = w.open(4004, from_start=True)
    w.reply(worker, res(T.JOB_ASSIGN, b"H:x:1", FN, b"p"))
    assert w.tracker.boot == "123.1"
    assert [(e.kind, e.boot) for e in w.events if e.handle == "H:x:1"][-1] == (
        "started", "123.1")


def test_a_backlog_from_before_hq_watched_is_no_restart() -> None:
    """HQ joined a gearmand with thousands of jobs queued: handles far below (and at the
    start of) the counter are handed out for a long time. No boot, nothing lost."""
    w = Wire()
    client, worker = w.open(4001), w.open(4002)
    for n in range(10_001, 10_101):
        w.submit(client, f"H:x:{n}", ptype=T.SUBMIT_JOB_BG, unique=b"new-%d" % n)
    for n in (1, 2, 3, 17, 4_000):
        w.assign(worker, f"H:x:{n}", unique=b"old-%d" % n)
        w.send(worker, req(T.WORK_COMPLETE, f"H:x:{n}".encode(), b""))
    assert w.tracker.boot == "123" and w.of("lost") == []
    assert len(w.of("completed")) == 5


def test_a_queued_job_of_handle_1_assigned_late_is_no_restart() -> None:
    w = Wire()
    client, worker = w.open(4001), w.open(4002)
    for n in range(1, 80):  # handle 1 waits (no worker for it) while the counter goes on
        w.submit(client, f"H:x:{n}", ptype=T.SUBMIT_JOB_BG, unique=b"u-%d" % n)
    w.assign(worker, "H:x:1", unique=b"u-1")
    assert w.tracker.boot == "123" and w.of("lost") == []
