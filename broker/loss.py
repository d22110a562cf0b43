"""Copies a byte source had to drop, owed to its sink as gaps.

The hand-offs between the forwarding loop and whoever decodes the copies (the proxy's
thread shipper, :mod:`broker.shippers`; the pipe to the tap child, :mod:`broker.pipe`)
drop copies rather than ever delay traffic. The sink must still learn what it missed, in
stream order, so that its parser resynchronises: :class:`Losses` remembers the bytes
dropped per connection and direction, and its owner reports them as one ``on_gap`` just
before the next bytes it does pass on for that direction, or before the close.
"""

from __future__ import annotations

from collections.abc import Callable

from broker.stream import ConnKey

#: Where a settled loss goes: called like ``StreamSink.on_gap(conn, from_peer, ts, lost)``.
GapReport = Callable[[ConnKey, bool, float, int], None]


class Losses:
    """Bytes dropped per (connection, direction) and not reported yet, plus totals.

    ``owed`` is empty unless something was dropped, so the hot path checks it with one
    truth test before calling :meth:`settle`.
    """

    __slots__ = ("dropped_bytes", "dropped_chunks", "owed")

    def __init__(self) -> None:
        self.owed: dict[tuple[ConnKey, bool], int] = {}
        self.dropped_chunks = 0
        self.dropped_bytes = 0

    def drop(self, conn: ConnKey, from_peer: bool, size: int) -> None:
        """A copy of ``size`` bytes of one direction was not passed on."""
        key = (conn, from_peer)
        self.owed[key] = self.owed.get(key, 0) + size
        self.dropped_chunks += 1
        self.dropped_bytes += size

    def settle(self, conn: ConnKey, from_peer: bool, ts: float, report: GapReport) -> None:
        """Report what this direction lost since its last bytes passed on, if anything."""
        lost = self.owed.pop((conn, from_peer), 0)
        if lost:
            report(conn, from_peer, ts, lost)

    def settle_both(self, conn: ConnKey, ts: float, report: GapReport) -> None:
        """Before a close: report what either direction still owes."""
        for from_peer in (True, False):
            self.settle(conn, from_peer, ts, report)

    def stats(self) -> dict[str, int]:
        return {"dropped_chunks": self.dropped_chunks, "dropped_bytes": self.dropped_bytes}
