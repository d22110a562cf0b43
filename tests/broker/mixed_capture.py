"""A seeded capture of mixed Gearman traffic replayed through the whole capture path
(PcapStream → TcpDecoder → TcpReassembler → TapSink → Tracker), for comparing the compiled
modules with the pure-Python ones (test_compiled.py runs it in a subprocess each way).

Run as ``python -m tests.broker.mixed_capture OUT [IN]``: writes to OUT a pickle of
(hot path status, events, counters); with IN (another run's OUT) it also unpickles that
run's events here, so events pickled by one build are read by the other (the spool does).
"""

from __future__ import annotations

import itertools
import pickle
import random
import sys
from pathlib import Path
from typing import Any

from broker.compiled import status
from broker.jobstate import Event
from broker.pcap import PcapStream
from broker.protocol import PacketType as T
from broker.protocol import req, res
from broker.reassembly import TcpReassembler
from broker.tap import make_tap

from . import pcapgen

SERVER_PORT = 4730


class Side:
    """One connection of the capture, with the stream offset of each direction."""

    def __init__(self, writer: pcapgen.PcapWriter, port: int, rng: random.Random) -> None:
        self.conv = pcapgen.Conversation()
        self.conv.peer_port = port
        self.writer = writer
        self.rng = rng
        self.offsets = {True: 0, False: 0}
        writer.add(self.conv.syn())
        writer.add(self.conv.syn_ack())

    def send(self, from_peer: bool, data: bytes, *, lose: bool = False) -> None:
        """``data`` in one to three segments, the last two swapped now and then; with
        ``lose`` the first segment is not captured (a gap)."""
        start = self.offsets[from_peer]
        cuts = sorted(self.rng.sample(range(1, len(data)), min(2, len(data) - 1)))
        bounds = [0, *cuts[: self.rng.randint(0, 2)], len(data)]
        frames = [self.conv.data(from_peer, start + a, data[a:b])
                  for a, b in itertools.pairwise(bounds)]
        if lose:
            frames = frames[1:]
        if len(frames) > 1 and self.rng.random() < 0.2:
            frames[-1], frames[-2] = frames[-2], frames[-1]
        for frame in frames:
            self.writer.add(frame)
        self.offsets[from_peer] = start + len(data)

    def close(self) -> None:
        self.writer.add(self.conv.fin(True, self.offsets[True]))
        self.writer.add(self.conv.fin(False, self.offsets[False]))


def build(jobs: int = 600, seed: int = 13) -> bytes:
    rng = random.Random(seed)
    writer = pcapgen.PcapWriter()
    client, fg = Side(writer, 41000, rng), Side(writer, 41001, rng)
    workers = [Side(writer, 42000 + i, rng) for i in range(3)]
    for i, worker in enumerate(workers):
        worker.send(True, req(T.SET_CLIENT_ID, b"worker-%d" % i).to_bytes())
        worker.send(True, req(T.CAN_DO, b"resize").to_bytes() + req(T.CAN_DO, b"mail").to_bytes())
    for n in range(1, jobs + 1):
        handle = b"H:gm:%d" % n
        func = rng.choice([b"resize", b"mail", "ünï".encode(), b"bad\xff\x00name"])
        payload = rng.randbytes(rng.choice([0, 5, 300, 3000]))
        caller = rng.choice([client, fg])
        kind = (T.SUBMIT_JOB_BG if caller is client
                else rng.choice([T.SUBMIT_JOB, T.SUBMIT_JOB_HIGH]))
        caller.send(True, req(kind, func, b"u%d" % (n % 50), payload).to_bytes())
        caller.send(False, res(T.JOB_CREATED, handle).to_bytes(), lose=rng.random() < 0.01)
        worker = rng.choice(workers)
        worker.send(True, req(T.GRAB_JOB_ALL).to_bytes())
        worker.send(False, res(T.JOB_ASSIGN_UNIQ, handle, func, b"u", payload).to_bytes())
        if rng.random() < 0.2:
            done = b"%d" % rng.randint(-1, 9)
            worker.send(True, req(T.WORK_STATUS, handle, b"1", done).to_bytes())
        if rng.random() < 0.1:
            worker.send(True, req(T.WORK_DATA, handle, b"partial").to_bytes())
        end = rng.choice([T.WORK_COMPLETE, T.WORK_COMPLETE, T.WORK_FAIL, T.WORK_EXCEPTION])
        args = (handle,) if end == T.WORK_FAIL else (handle, rng.randbytes(20))
        worker.send(True, req(end, *args).to_bytes())
        if caller is fg:
            fg.send(False, res(end, *args).to_bytes())
        if n % 97 == 0:
            fg.send(True, b"status\n")
            fg.send(False, b"resize\t1\t0\t3\n.\n")
    workers[0].close()
    client.close()
    return writer.to_bytes()


def replay(capture: bytes) -> tuple[list[Event], dict[str, Any]]:
    events: list[Event] = []
    sink = make_tap(events.append)
    reassembler = TcpReassembler(SERVER_PORT, sink)
    pcap = PcapStream()
    for pos in range(0, len(capture), 7001):  # odd chunks: records cut anywhere
        pcap.feed_segments(capture[pos : pos + 7001], reassembler.handle)
    reassembler.close_all(2e9)
    counters = {"tracker": dict(sink.tracker.counters), "tap": dict(sink.counters),
                "reassembly": reassembler.stats(),
                "decoder": pcap.decoder.stats() if pcap.decoder else {}}
    return events, counters


def main(out: str, other: str | None = None) -> None:
    events, counters = replay(build())
    read: list[Event] | None = None
    if other is not None:
        read = pickle.loads(Path(other).read_bytes())[1]
    Path(out).write_bytes(pickle.dumps((status(), events, counters, read)))


if __name__ == "__main__":
    main(*sys.argv[1:])
