"""The correlation state machine, driven by packet sequences alone (no sockets).

Each test plays what gearmand and its peers would put on the wire, connection by
connection, and checks the lifecycle events the tracker emits. Boots are in test_boots,
the byte-level glue (:class:`~broker.tap.TapSink`) in test_tap.
"""

from __future__ import annotations

import pytest

from broker.protocol import AdminLine, PacketType, req, res
from broker.tracker import Event

from .wire import FN, H1, H2, H3, T, Wire, key

# ------------------------------------------------------------------ a whole fg job


def test_foreground_job_submit_created_assign_status_complete() -> None:
    w = Wire()
    client = w.open(5001)
    worker = w.open(5002, client_id=b"worker-1")
    w.send(worker, req(T.CAN_DO, FN), req(T.PRE_SLEEP))
    t_submit = w.send(client, req(T.SUBMIT_JOB, FN, b"u-1", b"hello"))
    w.reply(client, res(T.JOB_CREATED, H1.encode()))
    w.reply(worker, res(T.NOOP))
    w.send(worker, req(T.GRAB_JOB_UNIQ))
    t_start = w.reply(worker, res(T.JOB_ASSIGN_UNIQ, H1.encode(), FN, b"u-1", b"hello"))
    t_status = w.send(worker, req(T.WORK_STATUS, H1.encode(), b"1", b"2"))
    w.reply(client, res(T.WORK_STATUS, H1.encode(), b"1", b"2"))  # relayed: not an event
    t_done = w.send(worker, req(T.WORK_COMPLETE, H1.encode(), b"olleh"))
    w.reply(client, res(T.WORK_COMPLETE, H1.encode(), b"olleh"))  # relayed: not an event

    c, wk = client.peer, worker.peer
    assert w.events == [
        Event("submitted", "123", H1, t_submit, c, function="reverse", unique="u-1",
              priority="normal", background=False, epoch=None, data=b"hello", size=5),
        Event("started", "123", H1, t_start, wk, function="reverse", unique="u-1",
              worker="worker-1", data=b"hello", size=5),
        Event("status", "123", H1, t_status, wk, numerator=1, denominator=2),
        Event("completed", "123", H1, t_done, wk, worker="worker-1", data=b"olleh", size=5),
    ]
    assert w.tracker.active_handles() == []


def test_worker_without_client_id_is_named_by_its_address() -> None:
    w = Wire()
    client, worker = w.open(5001), w.open(5002)
    w.submit(client, H1, ptype=T.SUBMIT_JOB_BG)
    w.assign(worker, H1)
    w.send(worker, req(T.WORK_COMPLETE, H1.encode(), b""))
    assert [e.worker for e in w.events if e.kind in ("started", "completed")] == [
        "10.0.0.2:5002", "10.0.0.2:5002"]


def test_job_assign_all_and_plain_job_assign() -> None:
    w = Wire()
    client, worker = w.open(5001), w.open(5002)
    w.submit(client, H1, ptype=T.SUBMIT_JOB_BG, unique=b"u")
    w.submit(client, H2, ptype=T.SUBMIT_JOB_BG, unique=b"v")
    w.reply(worker, res(T.JOB_ASSIGN, H1.encode(), FN, b"data1"))
    w.reply(worker, res(T.JOB_ASSIGN_ALL, H2.encode(), FN, b"v", b"", b"data2"))
    started = w.of("started")
    assert [(e.handle, e.unique, e.data) for e in started] == [
        (H1, None, b"data1"), (H2, "v", b"data2")]


@pytest.mark.parametrize(("ptype", "priority", "background", "epoch"), [
    (T.SUBMIT_JOB, "normal", False, None),
    (T.SUBMIT_JOB_BG, "normal", True, None),
    (T.SUBMIT_JOB_HIGH, "high", False, None),
    (T.SUBMIT_JOB_HIGH_BG, "high", True, None),
    (T.SUBMIT_JOB_LOW, "low", False, None),
    (T.SUBMIT_JOB_LOW_BG, "low", True, None),
    (T.SUBMIT_JOB_EPOCH, "normal", True, 1700000123),
], ids=lambda v: v.name if isinstance(v, PacketType) else None)
def test_submit_type_sets_priority_background_epoch(
    ptype: PacketType, priority: str, background: bool, epoch: int | None
) -> None:
    w = Wire()
    client = w.open(5001)
    if ptype == T.SUBMIT_JOB_EPOCH:
        w.send(client, req(ptype, FN, b"u-9", b"1700000123", b"payload"))
    else:
        w.send(client, req(ptype, FN, b"u-9", b"payload"))
    w.reply(client, res(T.JOB_CREATED, H1.encode()))
    (ev,) = w.events
    assert (ev.kind, ev.handle, ev.function, ev.unique) == ("submitted", H1, "reverse", "u-9")
    assert (ev.priority, ev.background, ev.epoch) == (priority, background, epoch)
    assert (ev.data, ev.size) == (b"payload", 7)


def test_reduce_job_submit() -> None:
    w = Wire()
    client = w.open(5001)
    w.send(client, req(T.SUBMIT_REDUCE_JOB_BACKGROUND, FN, b"u", b"reducer", b"payload"))
    w.reply(client, res(T.JOB_CREATED, H1.encode()))
    (ev,) = w.events
    assert (ev.kind, ev.background, ev.data) == ("submitted", True, b"payload")


# ---------------------------------------------------------------------- pairing


def test_pipelined_submits_pair_first_in_first_out() -> None:
    w = Wire()
    client = w.open(5001)
    w.send(client, req(T.SUBMIT_JOB_BG, b"a", b"ua", b"1"),
           req(T.SUBMIT_JOB_HIGH_BG, b"b", b"ub", b"22"),
           req(T.SUBMIT_JOB_LOW_BG, b"c", b"uc", b"333"))
    w.reply(client, res(T.JOB_CREATED, H1.encode()), res(T.JOB_CREATED, H2.encode()),
            res(T.JOB_CREATED, H3.encode()))
    assert [(e.handle, e.function, e.unique, e.priority, e.size) for e in w.events] == [
        (H1, "a", "ua", "normal", 1), (H2, "b", "ub", "high", 2), (H3, "c", "uc", "low", 3)]


def test_pending_submits_are_per_connection() -> None:
    w = Wire()
    c1, c2 = w.open(5001), w.open(5003)
    w.send(c1, req(T.SUBMIT_JOB_BG, b"one", b"", b""))
    w.send(c2, req(T.SUBMIT_JOB_BG, b"two", b"", b""))
    w.reply(c2, res(T.JOB_CREATED, H1.encode()))
    w.reply(c1, res(T.JOB_CREATED, H2.encode()))
    assert [(e.handle, e.function, e.conn) for e in w.events] == [
        (H1, "two", c2.peer), (H2, "one", c1.peer)]


def test_assign_before_created_is_submitted_and_started_never_attached() -> None:
    w = Wire()
    client, worker = w.open(5001), w.open(5002, client_id=b"fast")
    t_submit = w.send(client, req(T.SUBMIT_JOB, FN, b"u", b"x"))
    w.assign(worker, H1, unique=b"u", payload=b"x")  # the worker was quicker
    w.reply(client, res(T.JOB_CREATED, H1.encode()))
    w.send(worker, req(T.WORK_COMPLETE, H1.encode(), b"y"))
    assert w.kinds() == ["started", "submitted", "completed"]
    submitted = w.of("submitted")[0]
    assert submitted.ts == t_submit
    assert (submitted.function, submitted.background, submitted.priority) == (
        "reverse", False, "normal")


def test_job_finished_before_its_created_still_gets_submitted() -> None:
    w = Wire()
    client, worker = w.open(5001), w.open(5002)
    w.send(client, req(T.SUBMIT_JOB_BG, FN, b"", b"x"))
    w.assign(worker, H1)
    w.send(worker, req(T.WORK_COMPLETE, H1.encode(), b"done"))
    w.reply(client, res(T.JOB_CREATED, H1.encode()))
    assert w.kinds() == ["started", "completed", "submitted"]
    assert w.tracker.active_handles() == []


def test_same_handle_to_a_second_client_is_attached() -> None:
    w = Wire()
    c1, c2 = w.open(5001), w.open(5003)
    w.submit(c1, H1, ptype=T.SUBMIT_JOB_BG, unique=b"same")
    t2 = w.send(c2, req(T.SUBMIT_JOB_BG, FN, b"same", b"p"))
    w.reply(c2, res(T.JOB_CREATED, H1.encode()))
    assert w.kinds() == ["submitted", "attached"]
    attached = w.of("attached")[0]
    assert (attached.handle, attached.conn, attached.ts, attached.background) == (
        H1, c2.peer, t2, True)


def test_attached_foreground_clients_abandon_only_when_the_last_one_leaves() -> None:
    w = Wire()
    c1, c2 = w.open(5001), w.open(5003)
    w.submit(c1, H1, unique=b"same")
    w.submit(c2, H1, unique=b"same")
    w.close(c1)
    assert w.kinds() == ["submitted", "attached"]
    w.close(c2)
    assert w.kinds() == ["submitted", "attached", "abandoned"]
    assert w.of("abandoned")[0].detail == "queued"


def test_error_reply_consumes_the_refused_submit() -> None:
    w = Wire()
    client = w.open(5001)
    w.send(client, req(T.SUBMIT_JOB_SCHED, b"sched", b"u", b"0", b"1", b"2", b"3", b"4",
                       b"data"))
    w.send(client, req(T.SUBMIT_JOB_BG, b"next", b"u2", b"data2"))
    w.reply(client, res(T.ERROR, b"ERR_UNKNOWN_COMMAND", b"not supported"))
    w.reply(client, res(T.JOB_CREATED, H1.encode()))
    (ev,) = w.events
    assert (ev.kind, ev.handle, ev.function, ev.unique) == ("submitted", H1, "next", "u2")


# --------------------------------------------------------------------- finishing


def test_exception_then_fail_is_one_finishing_event() -> None:
    w = Wire()
    client, worker = w.open(5001), w.open(5002)
    w.submit(client, H1)
    w.assign(worker, H1)
    w.send(worker, req(T.WORK_EXCEPTION, H1.encode(), b"boom"))
    w.send(worker, req(T.WORK_FAIL, H1.encode()))
    w.reply(client, res(T.WORK_FAIL, H1.encode()))  # gearmand's relay to the fg client
    assert w.kinds() == ["submitted", "started", "exception"]
    assert w.of("exception")[0].data == b"boom"


def test_relayed_complete_after_the_workers_is_not_a_duplicate() -> None:
    w = Wire()
    client, worker = w.open(5001), w.open(5002)
    w.submit(client, H1)
    w.assign(worker, H1)
    w.send(worker, req(T.WORK_DATA, H1.encode(), b"part"),
           req(T.WORK_WARNING, H1.encode(), b"careful"))
    w.reply(client, res(T.WORK_DATA, H1.encode(), b"part"))
    w.send(worker, req(T.WORK_COMPLETE, H1.encode(), b"r"))
    w.reply(client, res(T.WORK_COMPLETE, H1.encode(), b"r"))
    assert w.kinds() == ["submitted", "started", "data", "warning", "completed"]
    assert [e.data for e in w.events[2:4]] == [b"part", b"careful"]


def test_fail_relayed_by_gearmand_without_a_worker_packet_ends_the_job() -> None:
    """--job-retries exhausted: gearmand itself sends WORK_FAIL to the waiting client."""
    w = Wire()
    client, worker = w.open(5001), w.open(5002)
    w.submit(client, H1)
    w.assign(worker, H1)
    w.close(worker)
    t_fail = w.reply(client, res(T.WORK_FAIL, H1.encode()))
    assert w.kinds() == ["submitted", "started", "worker_lost", "failed"]
    failed = w.of("failed")[0]
    assert (failed.ts, failed.worker, failed.conn) == (t_fail, None, client.peer)
    assert "retries" in failed.detail
    assert w.tracker.active_handles() == []


def test_relayed_complete_without_the_workers_packet_is_not_labelled_given_up() -> None:
    w = Wire()
    client, worker = w.open(5001), w.open(5002)
    w.submit(client, H1)
    w.assign(worker, H1)
    w.reply(client, res(T.WORK_COMPLETE, H1.encode(), b"r"))  # worker's copy was missed
    completed = w.of("completed")
    assert len(completed) == 1
    assert completed[0].data == b"r"
    assert "retries" not in completed[0].detail


def test_worker_lost_then_reassigned_starts_again() -> None:
    w = Wire()
    client = w.open(5001)
    w1, w2 = w.open(5002, client_id=b"w1"), w.open(5004, client_id=b"w2")
    w.submit(client, H1, ptype=T.SUBMIT_JOB_BG)
    w.assign(w1, H1)
    w.send(w1, req(T.WORK_STATUS, H1.encode(), b"5", b"10"))
    t_lost = w.close(w1)
    w.assign(w2, H1)
    w.send(w2, req(T.WORK_COMPLETE, H1.encode(), b"ok"))
    assert w.kinds() == ["submitted", "started", "status", "worker_lost", "started",
                         "completed"]
    lost = w.of("worker_lost")[0]
    assert (lost.ts, lost.worker, lost.handle) == (t_lost, "w1", H1)
    assert [e.worker for e in w.of("started")] == ["w1", "w2"]
    assert w.of("completed")[0].worker == "w2"


def test_worker_closing_after_finishing_loses_nothing() -> None:
    w = Wire()
    client, worker = w.open(5001), w.open(5002)
    w.submit(client, H1, ptype=T.SUBMIT_JOB_BG)
    w.assign(worker, H1)
    w.send(worker, req(T.WORK_COMPLETE, H1.encode(), b""))
    w.close(worker)
    assert w.kinds() == ["submitted", "started", "completed"]


def test_foreground_client_gone_before_assignment_is_abandoned_queued() -> None:
    w = Wire()
    client = w.open(5001)
    w.submit(client, H1)
    t_close = w.close(client)
    assert w.kinds() == ["submitted", "abandoned"]
    ev = w.of("abandoned")[0]
    assert (ev.detail, ev.ts, ev.conn, ev.handle) == ("queued", t_close, client.peer, H1)
    assert w.tracker.active_handles() == []


def test_foreground_client_gone_after_assignment_is_abandoned_running_then_completes() -> None:
    w = Wire()
    client, worker = w.open(5001), w.open(5002)
    w.submit(client, H1)
    w.assign(worker, H1)
    w.close(client)
    w.send(worker, req(T.WORK_COMPLETE, H1.encode(), b"late"))
    assert w.kinds() == ["submitted", "started", "abandoned", "completed"]
    assert w.of("abandoned")[0].detail == "running"
    assert w.of("completed")[0].data == b"late"


def test_background_client_closing_abandons_nothing() -> None:
    w = Wire()
    client = w.open(5001)
    w.submit(client, H1, ptype=T.SUBMIT_JOB_BG)
    w.close(client)
    assert w.kinds() == ["submitted"]
    assert w.tracker.active_handles() == [H1]


def test_closing_an_unknown_connection_is_harmless() -> None:
    w = Wire()
    w.close(key(9999))
    assert w.events == []


# ---------------------------------------------------------------- joining mid-stream


def test_complete_for_an_unknown_handle_reports_what_is_known() -> None:
    w = Wire()
    worker = w.open(5002, client_id=b"old-worker")
    ts = w.send(worker, req(T.WORK_COMPLETE, b"H:lap:77", b"result"))
    assert w.events == [Event("completed", "123", "H:lap:77", ts, worker.peer,
                              worker="old-worker", data=b"result", size=6)]


def test_created_without_a_pending_submit_emits_nothing() -> None:
    w = Wire()
    client = w.open(5001)
    w.reply(client, res(T.JOB_CREATED, b"H:lap:40"))
    assert w.events == []
    assert w.tracker.counters["unmatched_created"] == 1
    # and the next real pair still matches
    w.submit(client, "H:lap:41", fn=b"next")
    assert [(e.kind, e.handle, e.function) for e in w.events] == [
        ("submitted", "H:lap:41", "next")]


def test_a_submit_held_behind_a_hole_whose_answer_went_by_is_not_paired() -> None:
    """After a hole in a connection's client→gearmand bytes, a submit captured before a
    JOB_CREATED already seen there was answered by it (gearmand answers in order), though
    delivered later: pairing it would give the next job its function and unique key."""
    w = Wire()
    tracker = w.tracker
    client = w.open(5001, from_start=True)
    w.submit(client, H1, ptype=T.SUBMIT_JOB_BG, unique=b"a")
    tracker.gap(client)  # the capture lost the segment with the submit of H2...
    tracker.packet(client, res(T.JOB_CREATED, H2.encode()), 1010.0, False)
    # ...and held the next one behind that hole until after H2's JOB_CREATED went by
    tracker.packet(client, req(T.SUBMIT_JOB_BG, FN, b"b", b""), 1005.0, True)
    tracker.packet(client, req(T.SUBMIT_JOB_BG, FN, b"c", b""), 1011.0, True)
    tracker.packet(client, res(T.JOB_CREATED, H3.encode()), 1012.0, False)
    assert [(e.handle, e.unique) for e in w.of("submitted")] == [(H1, "a"), (H3, "c")]
    assert tracker.counters["unmatched_submits"] == 1
    assert tracker.counters["unmatched_created"] == 1


def test_without_a_hole_capture_order_pairs_whatever_the_timestamps() -> None:
    """Capture timestamps of the two directions may be out of order by microseconds (taken
    on different CPUs); on a connection that lost nothing the order bytes come in is the
    order on the wire, and it alone decides."""
    w = Wire()
    tracker = w.tracker
    client = w.open(5001, from_start=True)
    tracker.packet(client, req(T.SUBMIT_JOB_BG, FN, b"a", b""), 1001.0, True)
    tracker.packet(client, res(T.JOB_CREATED, H1.encode()), 1002.0, False)
    tracker.packet(client, req(T.SUBMIT_JOB_BG, FN, b"b", b""), 1001.9999, True)
    tracker.packet(client, res(T.JOB_CREATED, H2.encode()), 1003.0, False)
    assert [(e.handle, e.unique) for e in w.of("submitted")] == [(H1, "a"), (H2, "b")]
    assert tracker.counters["unmatched_submits"] == 0


def test_assignment_of_a_job_queued_before_the_capture() -> None:
    w = Wire()
    worker = w.open(5002)
    w.assign(worker, "H:lap:500", unique=b"old", payload=b"in")
    w.send(worker, req(T.WORK_FAIL, b"H:lap:500"))
    assert [(e.kind, e.function, e.unique) for e in w.events] == [
        ("started", "reverse", "old"), ("failed", None, None)]


def test_packets_on_a_connection_never_opened_are_tracked() -> None:
    w = Wire()
    client = key(6000)
    w.submit(client, H1)
    assert w.kinds() == ["submitted"]


# ------------------------------------------------------------------------ admin


def test_admin_cancel_job_ok_is_cancelled() -> None:
    w = Wire()
    client, admin = w.open(5001), w.open(5005)
    w.submit(client, H1, ptype=T.SUBMIT_JOB_BG)
    w.send(admin, AdminLine(b"cancel job " + H1.encode()))
    t_ok = w.reply(admin, AdminLine(b"OK"))
    assert w.kinds() == ["submitted", "cancelled"]
    ev = w.of("cancelled")[0]
    assert (ev.handle, ev.ts, ev.conn) == (H1, t_ok, admin.peer)
    assert "cancel" in ev.detail
    assert w.tracker.active_handles() == []


def test_admin_cancel_refused_is_not_cancelled() -> None:
    w = Wire()
    client, admin = w.open(5001), w.open(5005)
    w.submit(client, H1, ptype=T.SUBMIT_JOB_BG)
    w.send(admin, AdminLine(b"cancel job " + H1.encode()))
    w.reply(admin, AdminLine(b"ERR UNKNOWN_JOB"))
    w.send(admin, AdminLine(b"status"))
    w.reply(admin, AdminLine(b"reverse\t1\t0\t0"), AdminLine(b"."))
    assert w.kinds() == ["submitted"]


def test_admin_ok_without_a_cancel_is_ignored() -> None:
    w = Wire()
    client, admin = w.open(5001), w.open(5005)
    w.submit(client, H1, ptype=T.SUBMIT_JOB_BG)
    w.send(admin, AdminLine(b"maxqueue reverse 10"))
    w.reply(admin, AdminLine(b"OK"))
    assert w.kinds() == ["submitted"]


# ----------------------------------------------------------------------- payloads


def test_payload_over_payload_max_is_truncated_with_the_full_size() -> None:
    w = Wire(payload_max=10)
    client, worker = w.open(5001), w.open(5002)
    big = bytes(range(100))
    w.submit(client, H1, payload=big)
    w.assign(worker, H1, payload=big)
    w.send(worker, req(T.WORK_DATA, H1.encode(), big[::-1]))
    w.send(worker, req(T.WORK_COMPLETE, H1.encode(), big * 2))
    assert [(e.kind, e.data, e.size) for e in w.events] == [
        ("submitted", big[:10], 100),
        ("started", big[:10], 100),
        ("data", big[::-1][:10], 100),
        ("completed", big[:10], 200),
    ]


def test_payload_exactly_payload_max_is_kept_whole() -> None:
    w = Wire(payload_max=10)
    client = w.open(5001)
    w.submit(client, H1, payload=b"0123456789")
    assert (w.events[0].data, w.events[0].size) == (b"0123456789", 10)


def test_an_assignment_delivered_after_the_jobs_end_does_not_start_it_again() -> None:
    """A hole in gearmand → worker bytes holds that direction back while the worker's
    WORK_COMPLETE (believed: the connection has gaps) comes through; the JOB_ASSIGN is then
    delivered late, with its own, earlier capture time. The job stays completed: no second
    start, no worker_lost when the worker leaves."""
    w = Wire()
    client, worker = w.open(5001), w.open(5002, b"w1")
    w.send(client, req(T.SUBMIT_JOB_BG, FN, b"u1", b"p"))
    w.reply(client, res(T.JOB_CREATED, H1.encode()))
    w.tracker.gap(worker)
    assigned_at = w.tick()  # captured now, held behind the hole
    w.send(worker, req(T.WORK_COMPLETE, H1.encode(), b"done"))
    w.tracker.packet(worker, res(T.JOB_ASSIGN_UNIQ, H1.encode(), FN, b"u1", b"p"),
                     assigned_at, False)
    w.close(worker)
    assert w.kinds(H1) == ["submitted", "completed"]
    assert w.tracker.counters["late_assignments"] == 1
    # a later assignment of that handle (a new job after an unseen restart) still counts
    w.reply(w.open(5003), res(T.JOB_ASSIGN_UNIQ, H1.encode(), FN, b"u2", b"p"))
    assert w.kinds(H1)[-1] == "started"


def test_a_capture_that_stops_loses_no_job_and_abandons_none() -> None:
    """Stopping a capture closes the flows it follows (to deliver their buffered bytes);
    those closes are not gearmand's: the running job's worker and the foreground client
    waiting for it are still connected, so no worker_lost and no abandoned (they would
    put a running job back to queued, or mark it abandoned, while it runs on)."""
    w = Wire()
    client, worker = w.open(5001), w.open(5002)
    w.submit(client, H1)
    w.submit(client, H2, ptype=T.SUBMIT_JOB_BG)
    w.assign(worker, H1)
    before = w.kinds()
    w.tracker.capture_ending()
    w.close(worker)
    w.close(client)
    assert w.kinds() == before == ["submitted", "submitted", "started"]


def test_closes_before_a_capture_ends_still_count() -> None:
    w = Wire()
    client, worker = w.open(5001), w.open(5002)
    w.submit(client, H1)
    w.assign(worker, H1)
    w.close(worker)
    w.tracker.capture_ending()
    w.close(client)
    assert w.kinds() == ["submitted", "started", "worker_lost"]
