"""Glue between a byte source and the tracker: one parser per direction per connection.

Both byte sources (``capture.py`` and ``proxy.py``) call a :class:`TapSink`; it decodes the
bytes and hands packets to the :class:`~broker.tracker.Tracker`. Decode problems are
counted and logged, never raised: a peer that sends garbage must not stop the tap. The
tracker is fuzzed never to raise; should it still, the packet is counted in
``tracker_errors``, logged, and the next one is handled.

Memory: each parser holds at most one partial packet (up to ``MAX_PACKET``, 64 MiB, as a
peer may declare), and all of them together at most ``PARSE_BUDGET`` (256 MiB): past it
the largest partial buffers are dropped, each reported to the tracker as a gap (counted in
``gaps`` and ``budget_drops``), until three quarters of the budget is left.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .limits import PARSE_BUDGET
from .protocol import DecodeError, Parser
from .stream import ConnKey
from .tracker import Event, Tracker

log = logging.getLogger(__name__)


class TapSink:
    """A :class:`~broker.stream.StreamSink` that feeds a tracker.

    The byte source calls it from one thread; the boot watcher may call
    :meth:`request_boot` from another. An uncontended lock (tens of nanoseconds a call)
    keeps the tracker single-threaded either way, so a restart is applied at once even
    when no traffic is flowing.
    """

    def __init__(self, tracker: Tracker, *, parse_budget: int = PARSE_BUDGET) -> None:
        self.tracker = tracker
        self.parse_budget = parse_budget
        self._parsers: dict[tuple[ConnKey, bool], Parser] = {}
        self._buffered = 0  # bytes held by all parsers together
        self._lock = threading.Lock()
        self.counters = {"connections": 0, "bytes": 0, "decode_errors": 0, "gaps": 0,
                         "budget_drops": 0, "budget_dropped_bytes": 0, "tracker_errors": 0}

    @property
    def buffered(self) -> int:
        """Bytes received and not parsed yet, all connections together."""
        return self._buffered

    def request_boot(self, pid: str) -> None:
        with self._lock:
            self.tracker.set_boot(pid, time.time())

    def on_open(self, conn: ConnKey, ts: float, *, mid_stream: bool = False) -> None:
        with self._lock:
            self._open(conn, ts, mid_stream)

    def _open(self, conn: ConnKey, ts: float, mid_stream: bool) -> None:
        self.counters["connections"] += 1
        for from_peer in (True, False):
            old = self._parsers.get((conn, from_peer))
            if old is not None:
                self._buffered -= old.buffered
            parser = self._parsers[(conn, from_peer)] = Parser()
            if mid_stream:
                parser.resync()
        self.tracker.opened(conn, ts, from_start=not mid_stream)

    def on_data(self, conn: ConnKey, from_peer: bool, data: bytes, ts: float) -> None:
        with self._lock:
            self.counters["bytes"] += len(data)
            parser = self._parsers.get((conn, from_peer))
            if parser is None:  # a source that did not announce the connection
                self._open(conn, ts, True)
                parser = self._parsers[(conn, from_peer)]
            before = parser.buffered
            items = parser.feed(data)
            self._buffered += parser.buffered - before
            packet = self.tracker.packet
            for item in items:
                if isinstance(item, DecodeError):
                    self._decode_error(conn, from_peer, item)
                    continue
                try:
                    packet(conn, item, ts, from_peer)
                except Exception:  # a tracker bug must not stop the recording of the rest
                    self._tracker_error(conn, item)
            if self._buffered > self.parse_budget:
                self._shed()

    def on_gap(self, conn: ConnKey, from_peer: bool, ts: float, lost: int) -> None:
        with self._lock:
            self.counters["gaps"] += 1
            parser = self._parsers.get((conn, from_peer))
            if parser is not None:
                self._buffered -= parser.buffered
                parser.resync()
            self.tracker.gap(conn)

    def on_capture_end(self) -> None:
        """The capture is stopping and is about to close every flow it follows."""
        with self._lock:
            self.tracker.capture_ending()

    def on_close(self, conn: ConnKey, ts: float) -> None:
        with self._lock:
            for from_peer in (True, False):
                parser = self._parsers.pop((conn, from_peer), None)
                if parser is not None:
                    self._buffered -= parser.buffered
            self.tracker.closed(conn, ts)

    def _shed(self) -> None:
        """Over the parse budget: drop the largest partial packets (each a gap) until a
        quarter of the budget is free again."""
        target = self.parse_budget * 3 // 4
        largest = sorted(self._parsers.items(), key=lambda kv: kv[1].buffered, reverse=True)
        for (conn, _from_peer), parser in largest:
            if self._buffered <= target or not parser.buffered:
                break
            self._buffered -= parser.buffered
            self.counters["budget_drops"] += 1
            self.counters["budget_dropped_bytes"] += parser.buffered
            self.counters["gaps"] += 1
            parser.resync()
            self.tracker.gap(conn)

    def _tracker_error(self, conn: ConnKey, item: object) -> None:
        self.counters["tracker_errors"] += 1
        count = self.counters["tracker_errors"]
        if count <= 10 or count % 1000 == 0:
            log.exception("tracker error #%d on %s for %.200r", count, conn, item)

    def _decode_error(self, conn: ConnKey, from_peer: bool, err: DecodeError) -> None:
        self.counters["decode_errors"] += 1
        count = self.counters["decode_errors"]
        if count <= 10 or count % 1000 == 0:
            side = "peer" if from_peer else "gearmand"
            log.warning("decode error #%d on %s (%s side): %s, %d bytes skipped",
                        count, conn, side, err.message, err.skipped)


def make_tap(emit: Callable[[Event], None], *, boot: str = "0",
             payload_max: int = 65536) -> TapSink:
    return TapSink(Tracker(emit, boot=boot, payload_max=payload_max))
