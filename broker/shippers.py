"""Shipping the proxy's copies to its sink without ever holding up forwarding.

The proxy hands each forwarded chunk to a shipper right after writing it on. A shipper
calls the :class:`~broker.stream.StreamSink` behind a guard that counts and logs what the
sink raises instead of letting it reach the forwarding loop.
:class:`InlineShipper` calls the sink from the loop itself (cheapest when the sink only
appends); :class:`ThreadShipper` hands copies to a daemon thread through a bounded deque
and, when that is full, drops the copy (never the traffic) and reports the loss to the
sink as a gap (:mod:`broker.loss`) so its parser resynchronises.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Literal

from broker.loss import Losses
from broker.stream import ConnKey, StreamSink

log = logging.getLogger(__name__)

ShipMode = Literal["inline", "thread"]

#: Log the first sink error and then one in this many, so a broken sink cannot flood logs.
SINK_ERROR_LOG_EVERY = 1000
#: Thread mode: chunks waiting for the sink thread before new copies are dropped.
QUEUE_MAX = 100_000


class _SinkGuard:
    """Calls the sink and swallows its exceptions, counting them (forwarding must go on)."""

    def __init__(self, sink: StreamSink) -> None:
        self.sink = sink
        self.errors = 0

    def failed(self, what: str) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % SINK_ERROR_LOG_EVERY == 0:
            log.exception("proxy sink %s failed (%d errors so far)", what, self.errors)

    def open(self, conn: ConnKey, ts: float) -> None:
        try:
            self.sink.on_open(conn, ts)
        except Exception:
            self.failed("on_open")

    def data(self, conn: ConnKey, from_peer: bool, data: bytes, ts: float) -> None:
        try:
            self.sink.on_data(conn, from_peer, data, ts)
        except Exception:
            self.failed("on_data")

    def gap(self, conn: ConnKey, from_peer: bool, ts: float, lost: int) -> None:
        try:
            self.sink.on_gap(conn, from_peer, ts, lost)
        except Exception:
            self.failed("on_gap")

    def close(self, conn: ConnKey, ts: float) -> None:
        try:
            self.sink.on_close(conn, ts)
        except Exception:
            self.failed("on_close")


class InlineShipper:
    """Calls the sink directly from the event loop, right after the write was issued.

    The sink is expected to be cheap (append to a list); this costs one Python call per
    chunk and no cross-thread hand-off.
    """

    def __init__(self, sink: StreamSink) -> None:
        self.guard = _SinkGuard(sink)
        self.open = self.guard.open
        self.data = self.guard.data
        self.close = self.guard.close

    def stats(self) -> dict[str, int]:
        return {"sink_errors": self.guard.errors, "queued": 0, "queue_depth": 0,
                "dropped_chunks": 0, "dropped_bytes": 0}

    def stop(self) -> None:
        """Nothing is queued inline."""


_OPEN, _DATA, _GAP, _CLOSE = 0, 1, 2, 3
_Item = tuple[int, ConnKey, bool, bytes, float, int]


class ThreadShipper:
    """Queues copies in a bounded deque drained by a daemon thread that calls the sink.

    The loop only appends a tuple. When the deque is full, the chunk's copy is dropped and
    the loss is remembered per (connection, direction) in :class:`~broker.loss.Losses`;
    the next item that fits for that direction is preceded by an ``on_gap`` with the bytes
    lost, so the sink sees gaps in stream order. Open/close are never dropped (one each
    per connection).
    """

    def __init__(self, sink: StreamSink, queue_max: int = QUEUE_MAX) -> None:
        self.guard = _SinkGuard(sink)
        self.queue_max = queue_max
        self.queue: collections.deque[_Item] = collections.deque()
        self.losses = Losses()
        self.queued = 0
        self._idle = False
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="proxy-sink", daemon=True)
        self._thread.start()

    def _put(self, item: _Item) -> None:
        self.queue.append(item)
        self.queued += 1
        if self._idle:
            self._wake.set()

    def open(self, conn: ConnKey, ts: float) -> None:
        self._put((_OPEN, conn, False, b"", ts, 0))

    def data(self, conn: ConnKey, from_peer: bool, data: bytes, ts: float) -> None:
        if len(self.queue) >= self.queue_max:
            self.losses.drop(conn, from_peer, len(data))
            return
        if self.losses.owed:
            self.losses.settle(conn, from_peer, ts, self.gap)
        self._put((_DATA, conn, from_peer, data, ts, 0))

    def gap(self, conn: ConnKey, from_peer: bool, ts: float, lost: int) -> None:
        self._put((_GAP, conn, from_peer, b"", ts, lost))

    def close(self, conn: ConnKey, ts: float) -> None:
        self.losses.settle_both(conn, ts, self.gap)
        self._put((_CLOSE, conn, False, b"", ts, 0))

    def _run(self) -> None:
        """Drain the deque; sleep on an Event only when it is empty (no per-item wakeup)."""
        queue = self.queue
        while True:
            try:
                item = queue.popleft()
            except IndexError:
                if self._stopping:
                    return
                self._idle = True
                self._wake.clear()
                if not queue and not self._stopping:
                    self._wake.wait(0.5)
                self._idle = False
                continue
            self._deliver(item)

    def _deliver(self, item: _Item) -> None:
        kind, conn, from_peer, data, ts, lost = item
        if kind == _DATA:
            self.guard.data(conn, from_peer, data, ts)
        elif kind == _OPEN:
            self.guard.open(conn, ts)
        elif kind == _GAP:
            self.guard.gap(conn, from_peer, ts, lost)
        else:
            self.guard.close(conn, ts)

    def stats(self) -> dict[str, int]:
        return {"sink_errors": self.guard.errors, "queued": self.queued,
                "queue_depth": len(self.queue), **self.losses.stats()}

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued, then end the thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)


Shipper = InlineShipper | ThreadShipper


def make_shipper(sink: StreamSink, ship: ShipMode, queue_max: int = QUEUE_MAX) -> Shipper:
    return ThreadShipper(sink, queue_max) if ship == "thread" else InlineShipper(sink)
