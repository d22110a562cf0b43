"""Glue between a byte source and the tracker: one parser per direction per connection.

Both byte sources (``capture.py`` and ``proxy.py``) call a :class:`TapSink`; it decodes the
bytes and hands packets to the :class:`~broker.tracker.Tracker`. Decode problems are
counted and logged, never raised: a peer that sends garbage must not stop the tap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

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

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self._parsers: dict[tuple[ConnKey, bool], Parser] = {}
        self._lock = threading.Lock()
        self.counters = {"connections": 0, "bytes": 0, "decode_errors": 0, "gaps": 0}

    def request_boot(self, pid: str) -> None:
        with self._lock:
            self.tracker.set_boot(pid, time.time())

    def on_open(self, conn: ConnKey, ts: float, *, mid_stream: bool = False) -> None:
        with self._lock:
            self._open(conn, ts, mid_stream)

    def _open(self, conn: ConnKey, ts: float, mid_stream: bool) -> None:
        self.counters["connections"] += 1
        for from_peer in (True, False):
            parser = self._parsers[(conn, from_peer)] = Parser()
            if mid_stream:
                parser.resync()
        self.tracker.opened(conn)

    def on_data(self, conn: ConnKey, from_peer: bool, data: bytes, ts: float) -> None:
        with self._lock:
            self.counters["bytes"] += len(data)
            parser = self._parsers.get((conn, from_peer))
            if parser is None:  # a source that did not announce the connection
                self._open(conn, ts, True)
                parser = self._parsers[(conn, from_peer)]
            packet = self.tracker.packet
            for item in parser.feed(data):
                if isinstance(item, DecodeError):
                    self._decode_error(conn, from_peer, item)
                else:
                    packet(conn, item, ts)

    def on_gap(self, conn: ConnKey, from_peer: bool, ts: float, lost: int) -> None:
        with self._lock:
            self.counters["gaps"] += 1
            parser = self._parsers.get((conn, from_peer))
            if parser is not None:
                parser.resync()
            self.tracker.gap(conn)

    def on_close(self, conn: ConnKey, ts: float) -> None:
        with self._lock:
            self._parsers.pop((conn, True), None)
            self._parsers.pop((conn, False), None)
            self.tracker.closed(conn, ts)

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
