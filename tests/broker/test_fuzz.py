"""Fuzzing the tap's whole path with hypothesis: arbitrary bytes into the codec, arbitrary
segments into the reassembler, arbitrary packet sequences into the tracker, arbitrary
lines into the admin parsers.

Properties: no exception escapes; every value an event carries is storable; the internal
buffers and tables stay under their stated budgets (shrunk here so the examples reach
them); and a well-formed conversation (submit → created → assign → complete) on fresh
connections after the garbage is still recorded exactly.

Each test is bounded (``max_examples``, small sizes): the file runs in well under a minute
on two cores. ``HQ_FUZZ_SCALE=20 pytest tests/broker/test_fuzz.py`` runs 20× the
examples by hand.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from broker.admin import parse_status, parse_worker
from broker.adminwatch import AdminWatch
from broker.pcap import TcpDecoder, TcpSegment
from broker.protocol import (
    ARG_COUNT,
    HEADER_SIZE,
    AdminLine,
    DecodeError,
    Packet,
    PacketType,
    Parser,
    req,
    res,
)
from broker.reassembly import TcpReassembler
from broker.tap import TapSink
from broker.tracker import Event, Tracker
from broker.values import Cleaner

from .wire import key

T = PacketType
SCALE = int(os.environ.get("HQ_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> Any:
    return settings(max_examples=examples * SCALE, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


COLUMNS = {"handle": 255, "function": 255, "unique": 255, "worker": 255, "conn": 100,
           "kind": 20}


def assert_storable(events: list[Event]) -> None:
    for ev in events:
        for name, limit in COLUMNS.items():
            value = getattr(ev, name)
            assert value is None or (len(value) <= limit and "\0" not in value), (name, ev)
        assert "\0" not in ev.detail and len(ev.detail) <= 1000
        assert "\0" not in ev.boot and len(ev.boot) <= 64
        for n in (ev.numerator, ev.denominator):
            assert n is None or -(2**63) <= n < 2**63
        assert ev.epoch is None or 0 <= ev.epoch <= 253_402_300_799
        assert 0 <= ev.size < 2**31


# ------------------------------------------------------------------ strategies

HANDLES = [b"H:g:1", b"H:g:2", b"H:g:70", b"H:g:9000", b"H:g:\x00", b"\xff", b"H:g:" * 80,
           "H:g:²".encode()]
#: the packets that move a job along, drawn more often than the rest
LIFECYCLE = [T.SUBMIT_JOB, T.SUBMIT_JOB_BG, T.SUBMIT_JOB_EPOCH, T.JOB_CREATED,
             T.JOB_ASSIGN_UNIQ, T.JOB_ASSIGN, T.WORK_COMPLETE, T.WORK_FAIL, T.WORK_EXCEPTION,
             T.WORK_STATUS, T.WORK_DATA, T.ERROR, T.SET_CLIENT_ID]
field_bytes = st.one_of(
    st.sampled_from([*HANDLES, b"", b"0", b"-1", b"99999999999999999999", b"abc"]),
    st.binary(max_size=40),
)


@st.composite
def packets(draw: st.DrawFn) -> Packet:
    """Any packet type, any direction, arguments from handles, numbers and noise."""
    ptype = draw(st.sampled_from(LIFECYCLE) | st.sampled_from(list(PacketType)))
    count = ARG_COUNT[ptype]
    args = [draw(field_bytes).replace(b"\0", b"") for _ in range(max(0, count - 1))]
    if count:
        args.append(draw(field_bytes))
    # mostly the direction gearmand's protocol gives the type, sometimes the other one
    request = ptype not in (T.JOB_CREATED, T.JOB_ASSIGN, T.JOB_ASSIGN_UNIQ, T.ERROR)
    return Packet(draw(st.booleans()) if draw(st.integers(0, 9)) == 0 else request,
                  ptype, tuple(args))


admin_lines = st.sampled_from([
    b"OK", b".", b"ERR UNKNOWN_JOB", b"status", b"cancel job H:g:1", b"CANCEL JOB H:g:2",
    b"workers", b"show jobs", b"version", b"", b"  status", b"f\t1\t1\t1",
]).map(AdminLine) | st.binary(max_size=30).map(lambda b: AdminLine(b.replace(b"\n", b"")))

Op = tuple[int, str, int, Packet | AdminLine]
ops = st.tuples(
    st.integers(0, 2),  # which connection
    st.sampled_from(["item"] * 12 + ["open", "open_start", "close", "gap"]),
    st.integers(0, 9),  # 0: the item goes the wrong way
    st.one_of(packets(), packets(), packets(), admin_lines),
)


@st.composite
def stories(draw: st.DrawFn) -> list[Op]:
    """A job's packets in a plausible order (submit, created, assign, replies) on two of
    the connections, some of them left out: the part of the space garbage rarely finds."""
    client, worker, admin = (draw(st.integers(0, 2)) for _ in range(3))
    handle = draw(st.sampled_from(HANDLES))
    names = field_bytes.map(lambda b: b.replace(b"\0", b""))
    fn, unique = draw(names), draw(names)
    submit = draw(st.sampled_from(LIFECYCLE[:3]))
    epoch = [draw(field_bytes)] if submit == T.SUBMIT_JOB_EPOCH else []
    steps: list[Op] = [
        (client, "item", 1, req(submit, fn, unique, *epoch, b"in")),
        (client, "item", 1, res(T.JOB_CREATED, handle)),
        (worker, "item", 1, res(T.JOB_ASSIGN_UNIQ, handle, fn, unique, b"in")),
    ]
    for ptype in draw(st.lists(st.sampled_from(LIFECYCLE[6:11]), max_size=3)):
        count = ARG_COUNT[ptype]
        steps.append((worker, "item", 1, req(ptype, handle, *([b"1"] * (count - 1)))))
    if draw(st.booleans()):  # an admin cancel (flip 2: from the peer, 1: from gearmand)
        steps.insert(2, (admin, "item", 2, AdminLine(b"cancel job " + handle)))
        steps.insert(3, (admin, "item", 1, AdminLine(draw(st.sampled_from([b"OK", b"ERR x"])))))
    kept = draw(st.lists(st.booleans(), min_size=len(steps), max_size=len(steps)))
    return [step for step, keep in zip(steps, kept, strict=True) if keep or draw(st.booleans())]


def conversation(tracker: Tracker, handle: bytes, ts: float) -> None:
    """submit → created → assign → complete, on two fresh connections seen from start."""
    client, worker = key(61001, "10.9.9.9"), key(61002, "10.9.9.9")
    for k in (client, worker):
        tracker.opened(k, from_start=True)
    tracker.packet(worker, req(T.SET_CLIENT_ID, b"clean-worker"), ts, True)
    tracker.packet(client, req(T.SUBMIT_JOB, b"fn-clean", b"u-clean", b"in"), ts + 1, True)
    tracker.packet(client, res(T.JOB_CREATED, handle), ts + 2, False)
    tracker.packet(worker, req(T.GRAB_JOB_UNIQ), ts + 3, True)
    tracker.packet(worker, res(T.JOB_ASSIGN_UNIQ, handle, b"fn-clean", b"u-clean", b"in"),
                   ts + 4, False)
    tracker.packet(worker, req(T.WORK_COMPLETE, handle, b"out"), ts + 5, True)
    tracker.packet(client, res(T.WORK_COMPLETE, handle, b"out"), ts + 6, False)


def assert_recorded_exactly(events: list[Event], handle: str, ts: float) -> None:
    mine = [e for e in events if e.handle == handle]
    assert [e.kind for e in mine] == ["submitted", "started", "completed"], mine
    submitted, started, completed = mine
    assert len({e.boot for e in mine}) == 1
    assert (submitted.function, submitted.unique, submitted.data, submitted.background,
            submitted.ts) == ("fn-clean", "u-clean", b"in", False, ts + 1)
    assert (started.worker, started.data, started.ts) == ("clean-worker", b"in", ts + 4)
    assert (completed.worker, completed.data, completed.ts) == ("clean-worker", b"out", ts + 5)


# ------------------------------------------------------------------ codec


@fuzz(300)
@given(st.binary(max_size=600), st.lists(st.integers(1, 64), max_size=20), st.booleans())
def test_codec_never_raises_and_buffers_at_most_one_packet(
        data: bytes, cuts: list[int], hunting: bool) -> None:
    parser = Parser(max_packet=256, max_line=64)
    if hunting:
        parser.resync()
    pos = 0
    for size in [*cuts, len(data)]:
        for item in parser.feed(data[pos:pos + size]):
            assert isinstance(item, Packet | AdminLine | DecodeError)
            if isinstance(item, Packet):
                assert len(item.args) == ARG_COUNT[item.type]
        assert parser.buffered <= HEADER_SIZE + 256 + 64
        pos += size


@fuzz(200)
@given(st.binary(max_size=400), st.lists(packets(), min_size=1, max_size=8))
def test_codec_after_garbage_and_a_resync_decodes_every_packet(
        garbage: bytes, sent: list[Packet]) -> None:
    parser = Parser()
    parser.feed(garbage)
    parser.resync()
    stream = b"".join(p.to_bytes() for p in sent)
    got = [i for i in parser.feed(stream) if not isinstance(i, DecodeError)]
    assert got == sent


# ------------------------------------------------------------------ tracker


@fuzz(600)
@given(st.lists(ops.map(lambda op: [op]) | stories(), max_size=30).map(
    lambda parts: [op for part in parts for op in part]))
def test_tracker_survives_any_packet_sequence_and_still_records_a_clean_job(
        sequence: list[Op]) -> None:
    events: list[Event] = []
    tracker = Tracker(events.append, boot="1", payload_max=64)
    ts = 1000.0
    for index, op, flip, item in sequence:
        k = key(50000 + index)
        ts += 0.5
        if op in ("open", "open_start"):
            tracker.opened(k, ts, from_start=op == "open_start")
        elif op == "close":
            tracker.closed(k, ts)
        elif op == "gap":
            tracker.gap(k)
        else:
            from_peer = item.request if isinstance(item, Packet) else flip % 2 == 0
            tracker.packet(k, item, ts, from_peer if flip else not from_peer)
        check_tracker(tracker)
    for kind in {e.kind for e in events}:
        event(f"emitted {kind}")
    if tracker.counters["forged"]:
        event("rejected a forged reply")
    handle = b"H:clean:%d" % (tracker._max_handle + 1)
    conversation(tracker, handle, ts + 10)
    assert_storable(events)
    assert_recorded_exactly(events, handle.decode(), ts + 10)
    check_tracker(tracker)


def check_tracker(tracker: Tracker) -> None:
    sizes = tracker.sizes()
    conns = tracker._conns.values()
    assert sizes["pending"] == sum(len(c.pending.items) for c in conns)
    assert sizes["pending_bytes"] == sum(len(s.payload) for c in conns for s in c.pending.items)
    assert sizes["pending_bytes"] <= len(tracker._conns) * 60 * 64
    for c in conns:
        assert c.pending.payload_bytes == sum(len(s.payload) for s in c.pending.items)
        assert all(h in tracker._jobs for h in c.holding)
        assert len(c.admin.queue) <= 256
    for handle, job in tracker._jobs.items():
        if job.holder is not None and job.holder in tracker._conns:
            assert handle in tracker._conns[job.holder].holding


@fuzz(400)
@given(st.lists(st.tuples(st.integers(0, 2), st.booleans(),
                          st.binary(max_size=120) | packets().map(Packet.to_bytes)),
                max_size=30))
def test_tap_survives_any_bytes_and_still_records_a_clean_job(
        chunks: list[tuple[int, bool, bytes]]) -> None:
    events: list[Event] = []
    sink = TapSink(Tracker(events.append, boot="1"), parse_budget=300)
    ts = 10.0
    for index, from_peer, data in chunks:
        ts += 1
        sink.on_data(key(52000 + index), from_peer, data, ts)
        assert sink.buffered <= 300 + 120
    if sink.counters["budget_drops"]:
        event("parse budget reached")
    event(f"{len(events)} events from the garbage")
    for index in range(3):
        sink.on_gap(key(52000 + index), True, ts, -1)
    client, worker = key(62001), key(62002)
    handle = b"H:clean:%d" % (sink.tracker._max_handle + 1)
    sink.on_open(client, ts)
    sink.on_open(worker, ts)
    wire = [
        (worker, True, req(T.SET_CLIENT_ID, b"clean-worker")),
        (client, True, req(T.SUBMIT_JOB, b"fn-clean", b"u-clean", b"in")),
        (client, False, res(T.JOB_CREATED, handle)),
        (worker, True, req(T.GRAB_JOB_UNIQ)),
        (worker, False, res(T.JOB_ASSIGN_UNIQ, handle, b"fn-clean", b"u-clean", b"in")),
        (worker, True, req(T.WORK_COMPLETE, handle, b"out")),
    ]
    for step, (k, from_peer, packet) in enumerate(wire):
        sink.on_data(k, from_peer, packet.to_bytes(), ts + step)
    assert_storable(events)
    assert_recorded_exactly(events, handle.decode(), ts)
    assert sink.counters["tracker_errors"] == 0


# ------------------------------------------------------------------ reassembly

PEER_ADDR, SERVER_ADDR = b"\x0a\x00\x00\x02", b"\x0a\x00\x00\x01"
ISN = {True: 1000, False: 900_000}
FLAGS = [0x10] * 8 + [0x18, 0x02, 0x12, 0x11, 0x04, 0x01, 0x3F]  # mostly ACK / PSH


@st.composite
def segments(draw: st.DrawFn) -> TcpSegment:
    """Segments of a few flows around plausible sequence numbers (so some arrive in order,
    some early, some twice), with any flags, and now and then a wild one."""
    port = draw(st.sampled_from([40000, 40001, 40002, 40003]))
    from_peer = draw(st.booleans())
    seq = ISN[from_peer] + draw(st.integers(-1, 1500))
    if draw(st.integers(0, 19)) == 0:
        seq = draw(st.integers(0, 2**32 - 1))
    flags = draw(st.sampled_from(FLAGS))
    payload = draw(st.binary(max_size=300) | packets().map(Packet.to_bytes))
    ack = ISN[not from_peer] + 1
    if from_peer:
        return TcpSegment(PEER_ADDR, port, SERVER_ADDR, 4730, seq, ack, flags, payload)
    return TcpSegment(SERVER_ADDR, 4730, PEER_ADDR, port, seq, ack, flags, payload)


@fuzz(400)
@given(st.lists(st.tuples(st.floats(0, 5), segments()), max_size=60))
def test_reassembler_and_tap_survive_any_segments_within_budget(
        steps: list[tuple[float, TcpSegment]]) -> None:
    events: list[Event] = []
    sink = TapSink(Tracker(events.append), parse_budget=2000)
    reassembler = TcpReassembler(4730, sink, max_flows=4, ooo_budget=1500,
                                 max_buffer=1000, unproven_timeout=3.0, idle_timeout=8.0)
    ts = 0.0
    for delay, seg in steps:
        ts += delay
        reassembler.handle(ts, seg)
        flows = reassembler._flows.values()
        assert reassembler.ooo_bytes == sum(
            h.heap_bytes for f in flows for h in (f.peer, f.server))
        assert reassembler.ooo_bytes <= 1500 + 310
        assert reassembler.flows_open <= 4
        assert sink.buffered <= 2000 + 300
    if reassembler.budget_gaps:
        event("out-of-order budget reached")
    if reassembler.gaps:
        event("gap reported")
    if events:
        event("events recorded")
    reassembler.close_all(ts + 100)
    assert reassembler.flows_open == 0 and reassembler.ooo_bytes == 0
    assert sink.buffered == 0
    assert_storable(events)
    assert sink.counters["tracker_errors"] == 0


@fuzz(300)
@given(st.sampled_from([0, 1, 12, 101, 108, 113, 228, 229, 276]), st.binary(max_size=120))
def test_frame_decoder_never_raises(linktype: int, frame: bytes) -> None:
    TcpDecoder(linktype).decode(memoryview(frame))


# ------------------------------------------------------------------ values and admin text


@fuzz(400)
@given(st.binary(max_size=1200), st.binary(max_size=1200))
def test_cleaned_values_are_storable_and_handles_stay_distinct(a: bytes, b: bytes) -> None:
    counters: dict[str, int] = {}
    clean = Cleaner(counters)
    for raw in (a, b):
        for text in (clean.handle(raw), clean.name(raw, 255), clean.name(raw, 100)):
            assert "\0" not in text and len(text) <= 255
            text.encode("utf-8")  # no lone surrogates: Postgres takes it
        number = clean.int8(raw)
        assert number is None or -(2**63) <= number < 2**63
        epoch, why = clean.epoch(raw)
        assert (epoch is None) == bool(why) and len(why) < 200
    if a != b:
        assert clean.handle(a) != clean.handle(b)


@fuzz(300)
@given(st.text(max_size=400))
def test_admin_reply_parsers_never_raise(line: str) -> None:
    status = parse_status(line)
    if status is not None:
        assert len(status.function.encode()) <= 255 and "\0" not in status.function
    worker, dropped = parse_worker(line)
    assert dropped >= 0
    if worker is not None:
        assert all(len(f.encode()) <= 255 for f in worker.functions)
    watch = AdminWatch()
    for _ in range(3):
        watch.command(line.encode("utf-8", "surrogateescape"))
        watch.reply(line.encode("utf-8", "surrogateescape"))


@pytest.mark.parametrize("seed", range(3))
def test_budget_shrunk_tracker_fuzz_smoke(seed: int) -> None:
    """A fixed-seed long sequence: thousands of random packets through one tracker."""
    import random
    rng = random.Random(seed)
    events: list[Event] = []
    tracker = Tracker(events.append, payload_max=16)
    types = list(PacketType)
    for n in range(5000):
        ptype = rng.choice(types)
        args = tuple(rng.choice([*HANDLES, b"", b"7", rng.randbytes(8)])
                     for _ in range(ARG_COUNT[ptype]))
        k = key(50000 + rng.randrange(8))
        if n % 97 == 0:
            tracker.closed(k, float(n))
        tracker.packet(k, Packet(rng.random() < 0.5, ptype, args), float(n), None)
    assert_storable(events)
    check_tracker(tracker)
