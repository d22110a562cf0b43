"""Test helpers for capture mode: a pcap byte stream pushed through PcapStream →
TcpDecoder → TcpReassembler into a sink that records every call.

A helper module like :mod:`pcapgen` (which writes the captures), not a test module.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections import defaultdict
from typing import Any

from broker.pcap import PcapStream, TcpDecoder
from broker.reassembly import TcpReassembler
from broker.stream import ConnKey

from . import pcapgen

Event = tuple[object, ...]
PEER = ConnKey("10.0.0.2", 40000, "10.0.0.1", 4730)


class RecordingSink:
    """Concatenates the bytes of each direction and keeps every call in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.streams: dict[tuple[ConnKey, bool], bytearray] = defaultdict(bytearray)
        self.closed = threading.Event()

    def on_open(self, conn: ConnKey, ts: float, *, mid_stream: bool = False) -> None:
        self.events.append(("open", conn, ts, mid_stream))

    def on_data(self, conn: ConnKey, from_peer: bool, data: bytes, ts: float) -> None:
        assert isinstance(data, bytes) and data
        self.streams[(conn, from_peer)] += data
        self.events.append(("data", conn, from_peer, data, ts))

    def on_gap(self, conn: ConnKey, from_peer: bool, ts: float, lost: int) -> None:
        self.events.append(("gap", conn, from_peer, ts, lost))

    def on_close(self, conn: ConnKey, ts: float) -> None:
        self.events.append(("close", conn, ts))
        self.closed.set()

    def kinds(self) -> list[str]:
        """Event names with consecutive data events merged: the shape of the conversation."""
        out: list[str] = []
        for event in self.events:
            name = str(event[0])
            if name != "data" or not out or out[-1] != "data":
                out.append(name)
        return out

    def gaps(self) -> list[tuple[bool, int]]:
        return [(bool(e[2]), int(e[4])) for e in self.events if e[0] == "gap"]  # type: ignore[call-overload]

    def stream(self, from_peer: bool, conn: ConnKey = PEER) -> bytes:
        return bytes(self.streams[(conn, from_peer)])


class Replay:
    """A pcap byte stream pushed through PcapStream → TcpDecoder → TcpReassembler, the
    way capture mode does it (``PcapStream.feed_segments``), or, with ``per_frame``,
    through ``PcapStream.feed`` and ``TcpDecoder.decode`` one frame at a time."""

    def __init__(self, *, per_frame: bool = False, **options: Any) -> None:
        self.sink = RecordingSink()
        self.pcap = PcapStream()
        self.per_frame = per_frame
        self._decoder: TcpDecoder | None = None
        self.reassembler = TcpReassembler(4730, self.sink, **options)

    @property
    def decoder(self) -> TcpDecoder | None:
        return self._decoder if self.per_frame else self.pcap.decoder

    def feed(self, data: bytes, chunk_sizes: list[int] | None = None) -> Replay:
        pos = 0
        sizes = iter(chunk_sizes or [len(data)])
        while pos < len(data):
            size = next(sizes, len(data))
            self._push(data[pos : pos + size])
            pos += size
        return self

    def _push(self, chunk: bytes) -> None:
        if not self.per_frame:
            self.pcap.feed_segments(chunk, self.reassembler.handle)
            return
        for ts, frame in self.pcap.feed(chunk):
            if self._decoder is None:
                self._decoder = TcpDecoder(self.pcap.linktype or 0)
            segment = self._decoder.decode(frame)
            if segment is not None:
                self.reassembler.handle(ts, segment)


def payload_of(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def handshake(conv: pcapgen.Conversation) -> list[bytes]:
    return [conv.syn(), conv.syn_ack()]


def segments(
    conv: pcapgen.Conversation,
    from_peer: bool,
    data: bytes,
    cuts: list[int],
) -> list[bytes]:
    """Frames carrying ``data`` cut at the given offsets."""
    bounds = [0, *cuts, len(data)]
    return [conv.data(from_peer, a, data[a:b]) for a, b in itertools.pairwise(bounds) if b > a]


def run(frames: list[bytes], *, writer: pcapgen.PcapWriter | None = None, **options: Any) -> Replay:
    writer = writer or pcapgen.PcapWriter()
    writer.extend(frames)
    return Replay(**options).feed(writer.to_bytes())
