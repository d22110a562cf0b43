"""Hostile packets at the tracker boundary: every value an event carries is storable and
bounded, no number or time can raise downstream, and a WORK_* reply counts only where
gearmand itself would accept it (the tracker's memory bounds are in test_bounds)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from broker.limits import EPOCH_MAX, FUNCTION_MAX, HANDLE_MAX, INT8_MAX, WORKER_MAX
from broker.protocol import AdminLine, req, res
from broker.tracker import Event

from .wire import FN, H1, H2, T, Wire


def storable(ev: Event) -> bool:
    """What Postgres accepts in JobEvent/Job columns (no NUL; varchar lengths)."""
    limits = {"handle": 255, "function": 255, "unique": 255, "worker": 255, "conn": 100,
              "kind": 20}
    for name, limit in limits.items():
        value = getattr(ev, name)
        if value is not None and (len(value) > limit or "\0" in value):
            return False
    return "\0" not in ev.detail and all(
        n is None or -(2**63) <= n < 2**63 for n in (ev.numerator, ev.denominator))


# ------------------------------------------------------------------ strings


def test_nul_and_undecodable_bytes_are_escaped_not_dropped() -> None:
    w = Wire()
    client = w.open(5001)
    worker = w.open(5002, client_id=b"w\0rker-\xff")
    w.send(client, req(T.SUBMIT_JOB_BG, b"re\0verse", b"u-\xc3\x28", b"p"))
    w.reply(client, res(T.JOB_CREATED, H1.encode()))
    w.assign(worker, H1, fn=b"re\0verse", unique=b"u-\xc3\x28")
    w.send(worker, req(T.WORK_COMPLETE, H1.encode(), b"\0binary ok\0"))
    submitted, started, completed = w.events
    assert (submitted.function, submitted.unique) == ("re\\x00verse", "u-\\xc3(")
    assert (started.function, started.unique) == ("re\\x00verse", "u-\\xc3(")
    assert started.worker == completed.worker == "w\\x00rker-\\xff"
    assert completed.data == b"\0binary ok\0"  # data stays bytes: the writer stores them
    assert all(storable(e) for e in w.events)
    assert w.tracker.counters["values_cleaned"] >= 5


def test_valid_utf8_and_backslashes_pass_unchanged() -> None:
    w = Wire()
    client = w.open(5001)
    w.send(client, req(T.SUBMIT_JOB_BG, "App\\Jobs\\Résumé".encode(), "ключ".encode(), b""))
    w.reply(client, res(T.JOB_CREATED, H1.encode()))
    (ev,) = w.events
    assert (ev.function, ev.unique) == ("App\\Jobs\\Résumé", "ключ")
    assert w.tracker.counters["values_cleaned"] == 0


def test_over_long_names_are_cut_visibly_and_stay_distinct() -> None:
    w = Wire()
    client = w.open(5001)
    long_a, long_b = b"f" * 300 + b"A", b"f" * 300 + b"B"
    w.send(client, req(T.SUBMIT_JOB_BG, long_a, b"u" * 5000, b"x"))
    w.reply(client, res(T.JOB_CREATED, H1.encode()))
    w.send(client, req(T.SUBMIT_JOB_BG, long_b, b"", b"y"))
    w.reply(client, res(T.JOB_CREATED, H2.encode()))
    a, b = w.events
    assert len(a.function or "") == len(b.function or "") == FUNCTION_MAX
    assert (a.function or "").startswith("f" * 200) and "…#" in (a.function or "")
    assert a.function != b.function
    assert len(a.unique or "") == 255 and (a.unique or "").startswith("uuu")


def test_two_over_long_handles_with_one_prefix_stay_two_jobs() -> None:
    w = Wire()
    client, worker = w.open(5001), w.open(5002)
    h_a, h_b = b"H:" + b"x" * 400 + b":1", b"H:" + b"x" * 400 + b":2"
    for handle, payload in ((h_a, b"pa"), (h_b, b"pb")):
        w.send(client, req(T.SUBMIT_JOB_BG, FN, b"", payload))
        w.reply(client, res(T.JOB_CREATED, handle))
    w.reply(worker, res(T.JOB_ASSIGN, h_b, FN, b"pb"))
    w.send(worker, req(T.WORK_COMPLETE, h_b, b"done"))
    handles = {e.handle for e in w.events}
    assert len(handles) == 2 and all(len(h) <= HANDLE_MAX for h in handles)
    assert w.kinds() == ["submitted", "submitted", "started", "completed"]
    finished = w.events[-1].handle
    assert [e.kind for e in w.events if e.handle == finished] == [
        "submitted", "started", "completed"]
    assert w.tracker.active_handles() == [w.events[0].handle]


def test_a_handle_with_a_nul_is_not_the_same_job_as_its_escaped_spelling() -> None:
    w = Wire()
    client = w.open(5001)
    for handle in (b"H:x:\x001", b"H:x:\\x001"):
        w.send(client, req(T.SUBMIT_JOB_BG, FN, b"", b""))
        w.reply(client, res(T.JOB_CREATED, handle))
    first, second = w.events
    assert second.handle == "H:x:\\x001" and first.handle.startswith("H:x:\\x001#")
    assert w.kinds() == ["submitted", "submitted"]


def test_over_long_client_id_is_cut_for_the_worker_column() -> None:
    w = Wire()
    worker = w.open(5002, client_id=b"id-" * 200)
    w.assign(worker, H1)
    (ev,) = w.events
    assert ev.worker is not None and len(ev.worker) == WORKER_MAX


def test_handle_with_a_unicode_digit_tail_does_not_break_the_counter() -> None:
    w = Wire()
    client = w.open(5001)
    w.submit(client, "H:x:²", ptype=T.SUBMIT_JOB_BG)
    w.submit(client, "H:x:" + "9" * 5000, ptype=T.SUBMIT_JOB_BG)
    w.submit(client, "H:x:3", ptype=T.SUBMIT_JOB_BG)
    assert w.kinds() == ["submitted"] * 3


# ------------------------------------------------------------------ numbers and times


@pytest.mark.parametrize("raw", [
    b"999999999999", b"-5", b"253402300800", b"abc", b"1_000", b" 12", b"", b"9" * 5000,
    "١٢".encode(),
])
def test_unusable_epoch_is_dropped_with_a_note_and_the_job_kept(raw: bytes) -> None:
    w = Wire()
    client = w.open(5001)
    w.send(client, req(T.SUBMIT_JOB_EPOCH, FN, b"u", raw, b"payload"))
    w.reply(client, res(T.JOB_CREATED, H1.encode()))
    (ev,) = w.events
    assert (ev.kind, ev.epoch, ev.data) == ("submitted", None, b"payload")
    assert "epoch" in ev.detail and "ignored" in ev.detail and len(ev.detail) < 200
    assert w.tracker.counters["bad_epochs"] == 1


@pytest.mark.parametrize("epoch", [0, 1, 1700000123, EPOCH_MAX])
def test_usable_epochs_are_kept_and_convert_to_a_datetime(epoch: int) -> None:
    w = Wire()
    client = w.open(5001)
    w.send(client, req(T.SUBMIT_JOB_EPOCH, FN, b"u", str(epoch).encode(), b"p"))
    w.reply(client, res(T.JOB_CREATED, H1.encode()))
    (ev,) = w.events
    assert ev.epoch == epoch and ev.detail == ""
    assert ev.epoch is not None
    datetime.fromtimestamp(ev.epoch, UTC)  # what the writer does with it: must not raise


@pytest.mark.parametrize(("raw", "value"), [
    (b"7", 7), (str(INT8_MAX).encode(), INT8_MAX), (str(2**63).encode(), None),
    (str(2**64 + 5).encode(), None), (b"-1", -1), (str(-(2**63) - 1).encode(), None),
    (b"abc", None), (b"1e3", None), ("²".encode(), None), (b"9" * 5000, None),
])
def test_status_numbers_fit_bigint_or_are_none(raw: bytes, value: int | None) -> None:
    w = Wire()
    worker = w.open(5002)
    w.assign(worker, H1)
    w.send(worker, req(T.WORK_STATUS, H1.encode(), raw, b"100"))
    status = w.of("status")[0]
    assert (status.numerator, status.denominator) == (value, 100)
    assert w.tracker.counters["bad_numbers"] == (value is None)


def test_pid_from_the_admin_protocol_is_bounded_as_a_boot_token() -> None:
    w = Wire()
    w.tracker.set_boot("9" * 500 + "\0", 1.0)
    assert len(w.tracker.boot) <= 40 and "\0" not in w.tracker.boot


# ------------------------------------------------------------------ forged replies


def test_complete_from_a_connection_that_does_not_hold_the_job_is_rejected() -> None:
    """The issue's example: any connection could end any job. gearmand accepts WORK_*
    only from the worker it assigned the job to; so does HQ now."""
    w = Wire()
    client = w.open(5001, from_start=True)
    worker = w.open(5002, client_id=b"real", from_start=True)
    intruder = w.open(5003, from_start=True)
    w.submit(client, H1, ptype=T.SUBMIT_JOB_BG)
    w.send(intruder, req(T.WORK_COMPLETE, H1.encode(), b"fake"))  # queued: nobody holds it
    w.assign(worker, H1)
    w.send(intruder, req(T.WORK_COMPLETE, H1.encode(), b"fake"),
           req(T.WORK_STATUS, H1.encode(), b"1", b"1"), req(T.WORK_DATA, H1.encode(), b"d"),
           req(T.WORK_FAIL, H1.encode()), req(T.WORK_EXCEPTION, H1.encode(), b"e"),
           req(T.WORK_WARNING, H1.encode(), b"w"))
    w.send(intruder, req(T.WORK_COMPLETE, b"H:lap:999", b"never existed"))
    assert w.kinds() == ["submitted", "started"]
    assert w.tracker.counters["forged"] == 8
    w.send(worker, req(T.WORK_COMPLETE, H1.encode(), b"real result"))
    assert w.kinds() == ["submitted", "started", "completed"]
    assert (w.events[-1].data, w.events[-1].worker) == (b"real result", "real")


def test_once_seen_assigned_to_a_only_a_may_reply_even_mid_stream() -> None:
    w = Wire()
    a, b = w.open(5002, client_id=b"a"), w.open(5003, client_id=b"b")  # joined mid-stream
    w.assign(a, H1)
    w.send(b, req(T.WORK_COMPLETE, H1.encode(), b"fake"))
    assert w.kinds() == ["started"] and w.tracker.counters["forged"] == 1
    w.send(a, req(T.WORK_COMPLETE, H1.encode(), b"ok"))
    assert w.kinds() == ["started", "completed"] and w.events[-1].worker == "a"


def test_mid_stream_worker_may_finish_a_job_hq_never_saw_assigned() -> None:
    """Don't invent, but record what later packets tell: the job may have been assigned
    before the capture began, on this very connection."""
    w = Wire()
    client = w.open(5001)
    w.submit(client, H1, ptype=T.SUBMIT_JOB_BG)  # an attach to a job running since before
    old = w.open(5002, client_id=b"old")
    w.send(old, req(T.WORK_COMPLETE, H1.encode(), b"r"))
    assert w.kinds() == ["submitted", "completed"] and w.tracker.counters["forged"] == 0


def test_worker_seen_from_its_start_cannot_finish_a_job_it_was_never_given() -> None:
    w = Wire()
    fresh = w.open(5002, from_start=True)
    w.send(fresh, req(T.WORK_COMPLETE, b"H:lap:77", b"result"))
    assert w.events == [] and w.tracker.counters["forged"] == 1


def test_after_a_gap_the_requeued_job_may_be_finished_by_whoever_reports_it() -> None:
    """The reassignment may have been in the lost bytes; while another worker holds the
    job, though, a reply from elsewhere is still rejected."""
    w = Wire()
    client = w.open(5001, from_start=True)
    a = w.open(5002, client_id=b"a", from_start=True)
    b = w.open(5003, client_id=b"b", from_start=True)
    w.submit(client, H1, ptype=T.SUBMIT_JOB_BG)
    w.assign(a, H1)
    w.tracker.gap(b)
    w.send(b, req(T.WORK_COMPLETE, H1.encode(), b"x"))  # a still holds it
    assert w.tracker.counters["forged"] == 1
    w.close(a)
    w.send(b, req(T.WORK_COMPLETE, H1.encode(), b"y"))
    assert w.kinds() == ["submitted", "started", "worker_lost", "completed"]
    assert w.events[-1].data == b"y"


def test_exception_then_fail_from_the_holder_is_not_counted_forged() -> None:
    w = Wire()
    worker = w.open(5002, from_start=True)
    w.assign(worker, H1)
    w.send(worker, req(T.WORK_EXCEPTION, H1.encode(), b"boom"), req(T.WORK_FAIL, H1.encode()))
    assert w.kinds() == ["started", "exception"] and w.tracker.counters["forged"] == 0


def test_reassignment_moves_the_job_so_the_old_worker_closing_loses_nothing() -> None:
    w = Wire()
    a, b = w.open(5002, client_id=b"a"), w.open(5003, client_id=b"b")
    w.assign(a, H1)
    w.assign(b, H1)  # a's death was missed; gearmand gave the job to b
    w.close(a)
    w.send(a, req(T.WORK_COMPLETE, H1.encode(), b"late"))
    w.send(b, req(T.WORK_COMPLETE, H1.encode(), b"ok"))
    assert w.kinds() == ["started", "started", "completed"]
    assert w.events[-1].worker == "b"


def test_response_magic_from_a_peer_is_misdirected_not_believed() -> None:
    """A client that sends gearmand ``\\0RES WORK_FAIL`` is not gearmand giving up."""
    w = Wire()
    client = w.open(5001, from_start=True)
    worker = w.open(5002, from_start=True)
    w.submit(client, H1)
    w.assign(worker, H1)
    w.send(client, res(T.WORK_FAIL, H1.encode()), res(T.JOB_CREATED, H2.encode()))
    w.reply(worker, req(T.WORK_COMPLETE, H1.encode(), b"x"))  # request magic from gearmand
    assert w.kinds() == ["submitted", "started"]
    assert w.tracker.counters["misdirected"] == 3


def test_relay_to_a_client_that_does_not_wait_for_the_job_is_rejected() -> None:
    w = Wire()
    client = w.open(5001, from_start=True)
    other = w.open(5003, from_start=True)
    worker = w.open(5002, from_start=True)
    w.submit(client, H1)
    w.assign(worker, H1)
    w.reply(other, res(T.WORK_FAIL, H1.encode()))
    assert w.kinds() == ["submitted", "started"] and w.tracker.counters["forged"] == 1
    w.reply(client, res(T.WORK_FAIL, H1.encode()))
    assert w.kinds() == ["submitted", "started", "worker_lost", "failed"]


# ------------------------------------------------------------------ admin replies


def _queued(w: Wire) -> None:
    client = w.open(5001)
    w.submit(client, H1, ptype=T.SUBMIT_JOB_BG)


def test_an_ok_sent_by_the_peer_itself_confirms_no_cancel() -> None:
    w = Wire()
    _queued(w)
    admin = w.open(5005)
    w.send(admin, AdminLine(b"cancel job " + H1.encode()), AdminLine(b"OK"))
    w.reply(admin, AdminLine(b"ERR UNKNOWN_JOB"), AdminLine(b"ERR UNKNOWN_COMMAND"))
    assert w.kinds() == ["submitted"]


def test_an_ok_answering_an_earlier_command_confirms_no_later_cancel() -> None:
    w = Wire()
    _queued(w)
    admin = w.open(5005)
    w.send(admin, AdminLine(b"maxqueue reverse 10"), AdminLine(b"status"),
           AdminLine(b"cancel job " + H1.encode()))
    w.reply(admin, AdminLine(b"OK"), AdminLine(b"OK\t1\t0\t0"), AdminLine(b"."))
    w.reply(admin, AdminLine(b"ERR UNKNOWN_JOB"))
    assert w.kinds() == ["submitted"]


def test_cancel_is_read_as_gearmand_reads_it() -> None:
    w = Wire()
    _queued(w)
    admin = w.open(5005)
    w.send(admin, AdminLine(b"CANCEL  Job " + H1.encode()))
    w.reply(admin, AdminLine(b"OK"))
    assert w.kinds() == ["submitted", "cancelled"]


def test_after_a_gap_admin_replies_confirm_nothing() -> None:
    w = Wire()
    _queued(w)
    admin = w.open(5005)
    w.send(admin, AdminLine(b"maxqueue reverse 10"))
    w.tracker.gap(admin)
    w.send(admin, AdminLine(b"cancel job " + H1.encode()))
    w.reply(admin, AdminLine(b"OK"))  # which command's? no telling any more
    assert w.kinds() == ["submitted"]
