"""Capture faults found by ``bench/faults.py``, replayed from crafted captures through the
real pipeline (PcapStream → TcpDecoder → TcpReassembler → TapSink → Tracker), no I/O.

- a segment the capture lost holds one direction back behind a hole while the other flows
  on: the held bytes must keep their own capture time, and a submit whose JOB_CREATED
  already went by must not be paired with a later one;
- gearmand closes a connection (a restart) while a worker still holds a job: the worker's
  later answer never reached gearmand and must not be believed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from broker.pcap import PcapStream, TcpDecoder
from broker.protocol import Packet, req, res
from broker.reassembly import TcpReassembler
from broker.tap import make_tap
from broker.tracker import Event

from . import pcapgen
from .wire import FN, T

BASE = 1_700_000_000.0


@dataclass
class Side:
    """One TCP connection to gearmand in a crafted capture: frames with their times."""

    conv: pcapgen.Conversation
    frames: list[tuple[float, bytes]] = field(default_factory=list)
    sent: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})

    def handshake(self, ts: float) -> None:
        self.frames += [(ts, self.conv.syn()), (ts + 1e-5, self.conv.syn_ack())]

    def packet(self, ts: float, pkt: Packet) -> bytes:
        """``pkt`` in one segment of its direction at ``ts``; returns the frame."""
        from_peer = pkt.request
        data = pkt.to_bytes()
        frame = self.conv.data(from_peer, self.sent[from_peer], data)
        self.sent[from_peer] += len(data)
        self.frames.append((ts, frame))
        return frame

    def fin(self, ts: float, from_peer: bool) -> None:
        self.frames.append((ts, self.conv.fin(from_peer, self.sent[from_peer])))


def replay(sides: list[Side], *, lost: frozenset[bytes] = frozenset(),
           until: float | None = None) -> tuple[list[Event], TcpReassembler]:
    """Every side's frames in capture-time order, except the ``lost`` ones, into a tracker."""
    events: list[Event] = []
    tap = make_tap(events.append, boot="1")
    reassembler = TcpReassembler(4730, tap)
    writer = pcapgen.PcapWriter()
    for ts, frame in sorted((f for s in sides for f in s.frames), key=lambda f: f[0]):
        if frame not in lost:
            writer.add(frame, ts)
    stream = PcapStream()
    frames = stream.feed(writer.to_bytes())
    decoder = TcpDecoder(stream.linktype or 0)
    for ts, captured in frames:
        segment = decoder.decode(captured)
        assert segment is not None
        reassembler.handle(ts, segment)
    if until is not None:
        reassembler.tick(until)
    return events, reassembler


def at(ts: float) -> object:
    """A capture time as pcap stores it (microseconds)."""
    return pytest.approx(ts, abs=1e-6)


def handle(n: int) -> str:
    return f"H:box:{n}"


def test_a_lost_submit_segment_never_pairs_later_jobs_with_older_submits() -> None:
    """The bench's mispairing: one lost client→gearmand segment, 300 jobs of a client that
    waits for each JOB_CREATED (as php-gearman does). The submits held behind the hole
    (≈ 1 s) must not be paired with the JOB_CREATEDs that come after it."""
    client = Side(pcapgen.Conversation(peer_port=40000))
    worker = Side(pcapgen.Conversation(peer_port=40001))
    client.handshake(BASE)
    worker.handshake(BASE)
    jobs = 300
    submit_at: dict[int, float] = {}
    lost = b""
    for n in range(1, jobs + 1):
        t = BASE + 0.01 * n
        unique, payload = b"u-%d" % n, b"payload-%d" % n
        frame = client.packet(t, req(T.SUBMIT_JOB_BG, FN, unique, payload))
        if n == 100:
            lost = frame  # the kernel dropped this one from the capture
        submit_at[n] = t
        client.packet(t + 0.002, res(T.JOB_CREATED, handle(n).encode()))
        worker.packet(t + 0.004, res(T.JOB_ASSIGN_UNIQ, handle(n).encode(), FN, unique,
                                     payload))
        worker.packet(t + 0.006, req(T.WORK_COMPLETE, handle(n).encode(), b"done"))
    events, reassembler = replay([client, worker], lost=frozenset({lost}),
                                 until=BASE + 0.01 * jobs + 5)
    assert reassembler.gaps == 1

    def number(e: Event) -> int:
        return int(e.handle.rpartition(":")[2])

    submitted = {number(e): e for e in events if e.kind == "submitted"}
    wrong = sorted(n for n, e in submitted.items() if e.unique != f"u-{n}")
    assert wrong == []
    assert all(e.data == b"payload-%d" % n and e.ts == at(submit_at[n])
               for n, e in submitted.items())
    # before the hole everything pairs; the jobs in the hole are known from their
    # assignment on; every job after it pairs again
    missing = sorted(set(range(1, jobs + 1)) - set(submitted))
    assert missing and missing[0] == 100
    assert missing == list(range(100, missing[-1] + 1))  # one run: the hole
    assert missing[-1] < 220  # ≈ 1 s of jobs (gap_timeout), not the rest of the connection
    for kind in ("started", "completed"):
        assert sorted(number(e) for e in events if e.kind == kind) == list(range(1, jobs + 1))
    started = [e for e in events if e.kind == "started"]
    assert all(e.unique == f"u-{number(e)}" for e in started)


def test_an_answer_sent_after_gearmand_closed_the_connection_is_not_believed() -> None:
    """gearmand restarts while a worker (paused) holds a job: gearmand's FIN reaches the
    worker first, its WORK_COMPLETE 2 s later never reached gearmand. The job died with
    that gearmand; HQ must not record it completed."""
    client = Side(pcapgen.Conversation(peer_port=40000))
    worker = Side(pcapgen.Conversation(peer_port=40001))
    client.handshake(BASE)
    worker.handshake(BASE)
    worker.packet(BASE + 0.1, req(T.CAN_DO, FN))
    client.packet(BASE + 0.2, req(T.SUBMIT_JOB_BG, FN, b"u-1", b"p"))
    client.packet(BASE + 0.201, res(T.JOB_CREATED, handle(1).encode()))
    worker.packet(BASE + 0.3, res(T.JOB_ASSIGN_UNIQ, handle(1).encode(), FN, b"u-1", b"p"))
    closed_at = BASE + 1.0  # gearmand stops: it closes every connection
    client.fin(closed_at, from_peer=False)
    worker.fin(closed_at, from_peer=False)
    worker.packet(BASE + 3.0, req(T.WORK_COMPLETE, handle(1).encode(), b"too late"))
    worker.fin(BASE + 3.0001, from_peer=True)
    client.fin(BASE + 3.0002, from_peer=True)
    events, reassembler = replay([client, worker], until=BASE + 10)
    assert [(e.kind, e.ts) for e in events] == [
        ("submitted", at(BASE + 0.2)), ("started", at(BASE + 0.3)),
        ("worker_lost", at(closed_at))]
    assert reassembler.bytes_after_close == len(
        req(T.WORK_COMPLETE, handle(1).encode(), b"too late").to_bytes())
    assert reassembler.flows_open == 0
