"""Memory stays bounded against a hostile peer: the tracker's per-connection and per-job
structures, the tap's partial-packet buffers, the reassembler's out-of-order bytes and
its flows. Each bound is shrunk here (the real numbers are in broker.limits) so a test
can reach it."""

from __future__ import annotations

import struct

import pytest

from broker import compiled
from broker import tracker as tracker_module
from broker.protocol import req, res
from broker.stream import ConnKey
from broker.tap import TapSink
from broker.tracker import Event, Tracker

from . import pcapgen
from .replay import Replay, handshake, payload_of, run
from .wire import FN, H1, T, Wire, key

# ------------------------------------------------------------------ tracker


def test_submits_past_the_per_connection_cap_still_pair_exactly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracker_module, "PENDING_MAX", 3)
    w = Wire()
    client = w.open(5001)
    w.send(client, *(req(T.SUBMIT_JOB_BG, b"f%d" % i, b"", b"p") for i in range(6)))
    assert w.tracker.sizes()["pending"] == 3
    w.reply(client, res(T.JOB_CREATED, b"H:x:1"), res(T.JOB_CREATED, b"H:x:2"))
    w.send(client, req(T.SUBMIT_JOB_BG, b"late", b"", b"p"))  # still behind the unstored
    w.reply(client, *(res(T.JOB_CREATED, b"H:x:%d" % n) for n in range(3, 8)))
    assert [(e.handle, e.function) for e in w.events] == [
        ("H:x:1", "f0"), ("H:x:2", "f1"), ("H:x:3", "f2")]
    assert w.tracker.counters["pending_unstored"] == 4
    assert w.tracker.counters["unmatched_created"] == 4
    w.submit(client, "H:x:8", fn=b"after")  # drained: pairing resumes
    assert (w.events[-1].handle, w.events[-1].function) == ("H:x:8", "after")
    assert w.tracker.sizes()["pending"] == 0


def test_pending_payload_budget_keeps_the_job_and_its_size_not_its_bytes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracker_module, "PENDING_PAYLOAD_BUDGET", 10)
    w = Wire()
    client = w.open(5001)
    w.send(client, req(T.SUBMIT_JOB_BG, FN, b"", b"12345678"),
           req(T.SUBMIT_JOB_BG, FN, b"", b"abcdefgh"))
    assert w.tracker.sizes()["pending_bytes"] == 8
    w.reply(client, res(T.JOB_CREATED, b"H:x:1"), res(T.JOB_CREATED, b"H:x:2"))
    assert [(e.data, e.size) for e in w.events] == [(b"12345678", 8), (b"", 8)]
    assert w.tracker.counters["payloads_dropped"] == 1
    assert w.tracker.sizes()["pending_bytes"] == 0


def test_pending_is_released_by_gap_and_close() -> None:
    w = Wire()
    c1, c2 = w.open(5001), w.open(5003)
    w.send(c1, req(T.SUBMIT_JOB_BG, FN, b"", b"x" * 100))
    w.send(c2, req(T.SUBMIT_JOB_BG, FN, b"", b"y" * 50))
    assert w.tracker.sizes()["pending_bytes"] == 150
    w.tracker.gap(c1)
    w.close(c2)
    assert (w.tracker.sizes()["pending"], w.tracker.sizes()["pending_bytes"]) == (0, 0)


def test_job_table_cap_forgets_the_oldest_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracker_module, "JOBS_MAX", 2)
    w = Wire()
    client, worker = w.open(5001), w.open(5002)
    for n in (1, 2, 3):
        w.submit(client, f"H:x:{n}", ptype=T.SUBMIT_JOB_BG)
    w.assign(worker, "H:x:3")
    assert w.tracker.active_handles() == ["H:x:2", "H:x:3"]
    assert w.tracker.counters["jobs_evicted"] == 1


def test_admin_commands_past_the_cap_make_the_connection_blind(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from broker import adminwatch
    from broker.protocol import AdminLine
    monkeypatch.setattr(adminwatch, "ADMIN_PENDING_MAX", 4)
    w = Wire()
    client = w.open(5001)
    w.submit(client, H1, ptype=T.SUBMIT_JOB_BG)
    admin = w.open(5005)
    w.send(admin, *(AdminLine(b"version") for _ in range(4)),
           AdminLine(b"cancel job " + H1.encode()))
    w.reply(admin, *(AdminLine(b"OK 1") for _ in range(4)), AdminLine(b"OK"))
    assert w.kinds() == ["submitted"]
    assert w.tracker.counters["admin_overflow"] == 1


# ------------------------------------------------------------------ tap


def _declare(ptype: int, size: int) -> bytes:
    return b"\0REQ" + struct.pack(">II", ptype, size)


def test_partial_packets_past_the_parse_budget_are_dropped_as_gaps() -> None:
    events: list[Event] = []
    sink = TapSink(Tracker(events.append), parse_budget=1000)
    big, small, fresh = key(5001), key(5002), key(5003)
    for k in (big, small, fresh):
        sink.on_open(k, 1.0)
    sink.on_data(big, True, _declare(T.SUBMIT_JOB_BG, 5000) + b"x" * 700, 2.0)
    sink.on_data(small, True, _declare(T.SUBMIT_JOB_BG, 5000) + b"y" * 200, 2.0)
    assert sink.buffered <= 1000 and sink.counters["budget_drops"] == 0
    sink.on_data(small, True, b"y" * 200, 3.0)  # 1112 buffered: over
    assert sink.buffered <= 750
    assert sink.counters["budget_drops"] == 1 and sink.counters["gaps"] == 1
    assert sink.counters["budget_dropped_bytes"] == 712  # the largest: big's 12 + 700
    # the connection whose buffer went resynchronises; a fresh conversation is recorded
    sink.on_data(fresh, True, req(T.SUBMIT_JOB_BG, FN, b"u", b"p").to_bytes(), 4.0)
    sink.on_data(fresh, False, res(T.JOB_CREATED, H1.encode()).to_bytes(), 4.0)
    assert [(e.kind, e.handle) for e in events] == [("submitted", H1)]
    sink.on_close(small, 5.0)
    sink.on_close(big, 5.0)
    assert sink.buffered == 0


# ------------------------------------------------------------------ reassembly


def closed_ports(replay: Replay) -> list[int]:
    return [e[1].peer_port for e in replay.sink.events
            if e[0] == "close" and isinstance(e[1], ConnKey)]


def test_out_of_order_bytes_of_all_flows_stay_under_the_budget() -> None:
    frames = []
    for port in range(40000, 40020):
        conv = pcapgen.Conversation(peer_port=port)
        data = payload_of(3000, port)
        # the first 100 bytes never arrive: everything after waits for them
        frames += [*handshake(conv), conv.data(True, 100, data[100:1600]),
                   conv.data(True, 1600, data[1600:])]
    replay = run(frames, ooo_budget=20_000, gap_timeout=1e9)
    reassembler = replay.reassembler
    assert reassembler.ooo_bytes <= 20_000
    assert reassembler.budget_gaps > 0 and reassembler.stats()["budget_gaps"] > 0
    given_up = [e for e in replay.sink.events if e[0] == "gap"]
    assert len(given_up) == reassembler.gaps and all(e[4] == 100 for e in given_up)
    reassembler.close_all(1e6)
    assert reassembler.ooo_bytes == 0


def test_flows_gearmand_never_answered_expire_early() -> None:
    writer = pcapgen.PcapWriter(step=1.0)
    silent = pcapgen.Conversation(peer_port=40001)
    answered = pcapgen.Conversation(peer_port=40002)
    frames = [*handshake(silent), silent.data(True, 0, b"garbage"),
              *handshake(answered), answered.data(True, 0, b"ping"),
              answered.data(False, 0, b"pong")]
    replay = run(frames, writer=writer, unproven_timeout=30.0)
    reassembler = replay.reassembler
    reassembler.tick(writer.ts + 60.0)
    assert reassembler.flows_open == 1
    assert reassembler.flows_unproven_expired == 1
    assert closed_ports(replay) == [40001]


def test_at_max_flows_unanswered_flows_are_evicted_first() -> None:
    writer = pcapgen.PcapWriter(step=1.0)
    answered = pcapgen.Conversation(peer_port=39999)
    frames = [*handshake(answered), answered.data(True, 0, b"ping"),
              answered.data(False, 0, b"pong")]
    frames += [pcapgen.Conversation(peer_port=p).data(True, 0, b"x")
               for p in range(40000, 40100)]
    replay = run(frames, writer=writer, max_flows=16)
    assert 39999 not in closed_ports(replay)  # the oldest, but gearmand answered it
    assert replay.reassembler.flows_open <= 16


@pytest.mark.skipif(compiled.status().startswith("compiled"),
                    reason="replaces a method of a compiled class (test_compiled runs it pure)")
def test_a_tracker_error_is_counted_and_the_next_packet_still_recorded() -> None:
    events: list[Event] = []
    tracker = Tracker(events.append)
    sink = TapSink(tracker)
    real = tracker.packet
    broken = {"left": 1}

    def packet(*args: object) -> None:
        if broken["left"]:
            broken["left"] -= 1
            raise RuntimeError("a bug")
        real(*args)  # type: ignore[arg-type]

    tracker.packet = packet  # type: ignore[method-assign]
    k = key(5001)
    sink.on_open(k, 1.0)
    sink.on_data(k, True, req(T.SUBMIT_JOB_BG, FN, b"", b"a").to_bytes() * 2, 2.0)
    sink.on_data(k, False, res(T.JOB_CREATED, H1.encode()).to_bytes(), 3.0)
    assert sink.counters["tracker_errors"] == 1
    assert [(e.kind, e.handle) for e in events] == [("submitted", H1)]


def test_a_connection_made_from_the_server_port_is_not_read_as_gearmand() -> None:
    """Anyone may connect *from* their own port 4730 to another port of the gearmand host;
    a capture of ``tcp port 4730`` sees it, and its bytes would look like gearmand's
    replies (JOB_ASSIGN, WORK_FAIL...). The reassembler ignores such a connection."""
    fake = pcapgen.Conversation(peer="10.0.0.1", peer_port=22, server="10.0.0.66")
    assign = res(T.JOB_ASSIGN, H1.encode(), FN, b"x").to_bytes()
    frames = [
        fake.frame(False, fake.server_isn, flags=pcapgen.SYN),  # a SYN *from* port 4730
        fake.frame(True, fake.peer_isn, flags=pcapgen.SYN | pcapgen.ACK,
                   ack=fake.server_isn + 1),
        fake.data(False, 0, assign),
        fake.data(True, 0, b"SSH-2.0-OpenSSH\r\n"),
    ]
    real = pcapgen.Conversation(peer_port=40000)
    frames += [*handshake(real), real.data(True, 0, b"ping"), real.data(False, 0, b"pong")]
    replay = run(frames)
    assert replay.reassembler.flows_reversed == 1
    assert replay.reassembler.foreign == 4
    assert [e[1].peer_port for e in replay.sink.events
            if isinstance(e[1], ConnKey)] == [40000] * 3  # open and the two data of the real one
