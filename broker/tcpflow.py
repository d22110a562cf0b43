"""The state of one captured TCP flow, as :class:`~broker.reassembly.TcpReassembler` keeps
it: a :class:`Flow` of two :class:`Half` directions, and 32-bit sequence arithmetic."""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from broker.stream import ConnKey

MASK: Final = 0xFFFFFFFF
_HALF: Final = 0x80000000

FlowKey = tuple[bytes, int, bytes]  # peer address, peer port, server address (packed)


def seq_delta(a: int, b: int) -> int:
    """``a - b`` in 32-bit sequence space, as a signed int (so wrap-around just works)."""
    return ((a - b + _HALF) & MASK) - _HALF


class Half:
    """Reassembly state of one direction of a flow.

    ``next`` is the sequence number of the next byte to deliver (None until the direction
    shows its first byte). Out-of-order data waits in ``heap`` keyed by stream offset
    relative to ``off`` (the offset of ``next``); offsets are unbounded ints, so the heap
    order survives a sequence wrap. A zero-length entry marks a FIN beyond a hole.
    """

    __slots__ = ("done", "fin", "heap", "heap_bytes", "hole_ts", "isn", "next", "off")

    def __init__(self) -> None:
        self.next: int | None = None
        self.isn: int | None = None
        self.fin: int | None = None
        self.done = False
        self.heap: list[tuple[int, bytes, float]] = []
        self.heap_bytes = 0
        self.hole_ts = 0.0
        self.off = 0

    def reached(self) -> int | None:
        """The sequence number just past the furthest byte seen, delivered or buffered."""
        if self.next is None or not self.heap:
            return self.next
        furthest = max(start + len(payload) for start, payload, _arrival in self.heap)
        return (self.next + furthest - self.off) & MASK


class Flow:
    __slots__ = ("closed", "conn", "key", "last_ts", "peer", "server")

    def __init__(self, conn: ConnKey, key: FlowKey, ts: float) -> None:
        self.conn = conn
        self.key = key
        self.last_ts = ts
        self.peer = Half()
        self.server = Half()
        self.closed = False


def proven(flow: Flow) -> bool:
    """gearmand has sent bytes on this flow (it answered the peer at least once)."""
    server = flow.server
    if server.next is None:
        return False
    return server.isn is None or seq_delta(server.next, server.isn) > 1


class RecentKeys:
    """A set of flow keys that forgets its oldest past ``cap`` (a bounded blocklist)."""

    __slots__ = ("_keys", "cap")

    def __init__(self, cap: int = 4096) -> None:
        self._keys: OrderedDict[FlowKey, None] = OrderedDict()
        self.cap = cap

    def __contains__(self, key: FlowKey) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: FlowKey) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        if len(self._keys) > self.cap:
            self._keys.popitem(last=False)

    def discard(self, key: FlowKey) -> None:
        self._keys.pop(key, None)
