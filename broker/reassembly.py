"""TCP flow reassembly: captured segments in, each connection's two byte streams out.

:class:`TcpReassembler` rebuilds each connection's two byte streams by sequence number and
reports them to a :class:`~broker.stream.StreamSink`. The kernel may drop segments when the
reader falls behind and a capture may join connections already open, so the reassembler
reports what it could not recover as gaps instead of guessing, and the consumer
resynchronises.

Everything here runs on capture time (the segments' timestamps), so replaying a capture
gives the same events as watching it live. No I/O.
"""

from __future__ import annotations

import heapq
from typing import Final

from broker.limits import REASSEMBLY_BUDGET, UNPROVEN_TIMEOUT
from broker.pcap import TH_ACK, TH_FIN, TH_RST, TH_SYN, TcpSegment
from broker.pcap import format_address as _format_address
from broker.stream import ConnKey, StreamSink
from broker.tcpflow import MASK, Flow, FlowKey, Half, RecentKeys, proven, seq_delta

__all__ = ["STATS", "TcpReassembler", "seq_delta"]

_CONTROL: Final = TH_SYN | TH_FIN | TH_RST

#: The counters :meth:`TcpReassembler.stats` reports, in order.
STATS = (
    "segments", "bytes", "gaps", "lost_bytes", "out_of_order", "retransmits", "foreign",
    "flows_open", "flows_total", "flows_mid_stream", "flows_expired", "flows_unproven_expired",
    "budget_gaps", "ooo_bytes", "flows_reversed", "bytes_after_close",
)


class TcpReassembler:
    """Rebuilds the byte streams of every TCP connection to ``server_port``.

    Feed it each captured segment with :meth:`handle`. In-order bytes go to the sink at
    once (the common case costs one dict lookup and one comparison); out-of-order bytes
    wait for the hole before them, bounded by ``max_buffer`` bytes, ``max_ooo_segments``
    segments and ``gap_timeout`` seconds of capture time per direction, after which the
    hole is reported with ``on_gap`` and delivery continues after it. Retransmitted or
    overlapping bytes are trimmed so every byte is delivered once. Flows idle for
    ``idle_timeout`` (``closing_timeout`` once one side sent FIN) are closed, and at most
    ``max_flows`` are tracked, so memory stays bounded whatever the capture misses.

    Against a hostile peer (numbers in :mod:`broker.limits`): all flows hold at most
    ``ooo_budget`` out-of-order bytes (128 MiB; past it the largest holes are given up as
    gaps, ``budget_gaps``); a flow gearmand never sent a byte on (so no job state) closes
    after ``unproven_timeout`` (2 min) idle and is evicted first at ``max_flows``; and a
    connection *initiated from* the server port (someone's own port 4730 to any port here)
    is ignored (``flows_reversed``), as its bytes would read as gearmand's replies.

    gearmand closing a connection first ends the peer's stream where it had got to: what
    the peer sends later never reached gearmand (``bytes_after_close``, not delivered).
    """

    def __init__(
        self,
        server_port: int,
        sink: StreamSink,
        *,
        max_buffer: int = 4 << 20,
        max_ooo_segments: int = 4096,
        gap_timeout: float = 1.0,
        idle_timeout: float = 3600.0,
        closing_timeout: float = 60.0,
        max_flows: int = 65536,
        sweep_interval: float = 1.0,
        ooo_budget: int = REASSEMBLY_BUDGET,
        unproven_timeout: float = UNPROVEN_TIMEOUT,
    ) -> None:
        self.server_port = server_port
        self._sink = sink
        self.max_buffer = max_buffer
        self.max_ooo_segments = max_ooo_segments
        self.gap_timeout = gap_timeout
        self.idle_timeout = idle_timeout
        self.closing_timeout = closing_timeout
        self.max_flows = max_flows
        self.sweep_interval = sweep_interval
        self.ooo_budget = ooo_budget
        self.unproven_timeout = unproven_timeout
        self.ooo_bytes = 0  # out-of-order bytes buffered, all flows together
        self._flows: dict[FlowKey, Flow] = {}
        self._next_sweep = float("-inf")
        self._reversed = RecentKeys()  # connections initiated from the server port
        self._ended = RecentKeys()  # connections gearmand closed before the peer did
        # the counters of STATS (flows_open and ooo_bytes aside)
        self.segments = self.bytes = self.gaps = self.lost_bytes = self.out_of_order = 0
        self.retransmits = self.foreign = self.flows_total = self.flows_mid_stream = 0
        self.flows_expired = self.flows_unproven_expired = self.flows_reversed = 0
        self.budget_gaps = self.bytes_after_close = 0

    @property
    def flows_open(self) -> int:
        return len(self._flows)

    def stats(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in STATS}

    # -- the hot path ---------------------------------------------------------------------

    def handle(self, ts: float, seg: TcpSegment) -> None:
        """Account one captured segment (any order, duplicates allowed)."""
        self.segments += 1
        if ts >= self._next_sweep:
            self._sweep(ts)
        src, sport, dst, dport, seq, _ack, flags, payload = seg
        if dport == self.server_port:
            key = (src, sport, dst)
            from_peer = True
        elif sport == self.server_port:
            key = (dst, dport, src)
            from_peer = False
        else:
            self.foreign += 1
            return
        flow = self._flows.get(key)
        if flow is None or flags & _CONTROL:
            self._control(ts, key, from_peer, flow, seg)
            return
        flow.last_ts = ts
        if payload:
            self.bytes += len(payload)
            half = flow.peer if from_peer else flow.server
            if seq == half.next and not half.heap:
                half.next = (seq + len(payload)) & MASK
                self._sink.on_data(flow.conn, from_peer, payload, ts)
            else:
                self._data(flow, half, from_peer, seq, payload, ts)

    def tick(self, now: float) -> None:
        """Let capture time pass without segments (gap and idle timeouts still fire)."""
        if now >= self._next_sweep:
            self._sweep(now)

    def close_all(self, ts: float) -> None:
        """End every flow: buffered bytes are delivered (after their gaps), then on_close."""
        for flow in list(self._flows.values()):
            self._finish(flow, ts)

    # -- connection control ---------------------------------------------------------------

    def _control(
        self, ts: float, key: FlowKey, from_peer: bool, flow: Flow | None, seg: TcpSegment
    ) -> None:
        """SYN, FIN, RST, or the first segment of a flow not seen before."""
        flags = seg.flags
        if flags & TH_RST:
            if flow is not None:
                self._finish(flow, ts)
            return
        seq = seg.seq
        payload = seg.payload
        if flags & TH_SYN and bool(flags & TH_ACK) == from_peer:
            self._reverse(ts, key, flow)  # a SYN from the server port: not gearmand's
            return
        if flow is None and key in self._reversed:
            self.foreign += 1
            return
        if flow is None and key in self._ended:
            if not flags & TH_SYN:
                self.bytes_after_close += len(payload)  # gearmand had closed it
                return
            self._ended.discard(key)  # a new connection on the same ports
        if flags & TH_SYN:
            flow = self._syn(ts, key, from_peer, flow, seg)
            seq = (seq + 1) & MASK
        elif flow is None:
            if not payload:
                return  # a bare ACK or FIN of a connection we never saw: nothing to report
            flow = self._open(ts, key, mid_stream=True)
        flow.last_ts = ts
        half = flow.peer if from_peer else flow.server
        if payload:
            self.bytes += len(payload)
            self._data(flow, half, from_peer, seq, payload, ts)
        if flags & TH_FIN and not flow.closed:
            self._fin(flow, half, from_peer, (seq + len(payload)) & MASK, ts)

    def _reverse(self, ts: float, key: FlowKey, flow: Flow | None) -> None:
        if key not in self._reversed:
            self.flows_reversed += 1
        self.foreign += 1
        self._reversed.add(key)
        if flow is not None:
            self._finish(flow, ts)

    def _syn(
        self, ts: float, key: FlowKey, from_peer: bool, flow: Flow | None, seg: TcpSegment
    ) -> Flow:
        """Start a flow at its SYN (or SYN-ACK when the SYN was missed)."""
        if flow is not None:
            half = flow.peer if from_peer else flow.server
            if half.isn == seg.seq:
                return flow  # a retransmitted SYN or SYN-ACK
            if half.isn is not None or half.next is not None:
                self._finish(flow, ts)  # the ports were reused: the old connection is over
                flow = None
        if flow is None:
            flow = self._open(ts, key, mid_stream=False)
        half = flow.peer if from_peer else flow.server
        half.isn = seg.seq
        half.next = (seg.seq + 1) & MASK
        if not from_peer and seg.flags & TH_ACK and flow.peer.next is None:
            # The SYN-ACK acknowledges the peer's ISN + 1: the peer's stream starts there.
            flow.peer.next = seg.ack
            flow.peer.isn = (seg.ack - 1) & MASK
        return flow

    def _open(self, ts: float, key: FlowKey, *, mid_stream: bool) -> Flow:
        if len(self._flows) >= self.max_flows:
            self._evict(ts)
        peer_addr, peer_port, server_addr = key
        conn = ConnKey(
            _format_address(peer_addr), peer_port, _format_address(server_addr), self.server_port
        )
        flow = Flow(conn, key, ts)
        self._flows[key] = flow
        self.flows_total += 1
        if mid_stream:
            self.flows_mid_stream += 1
        self._sink.on_open(conn, ts, mid_stream=mid_stream)
        return flow

    def _fin(self, flow: Flow, half: Half, from_peer: bool, fin_seq: int, ts: float) -> None:
        """Note where a direction ends; it is done once every byte before it is delivered."""
        if half.next is None:
            half.next = fin_seq
        if half.fin is None:
            half.fin = fin_seq
        if not half.done and seq_delta(half.fin, half.next) > 0:
            # Bytes before the FIN are missing: a zero-length entry holds its place so the
            # hole is filled or given up like any other.
            self._push(half, seq_delta(half.fin, half.next), b"", ts)
            self._settle(flow, half, from_peer, ts)
        self._check_fin(flow, half, ts)

    def _check_fin(self, flow: Flow, half: Half, ts: float) -> None:
        if half.done or half.fin is None or half.next is None:
            return
        if seq_delta(half.next, half.fin) >= 0:
            half.done = True
            half.heap.clear()
            self.ooo_bytes -= half.heap_bytes
            half.heap_bytes = 0
            if flow.peer.done and flow.server.done:
                self._close(flow, ts)
            elif half is flow.server:
                self._server_closed(flow, ts)

    def _server_closed(self, flow: Flow, ts: float) -> None:
        """gearmand closed the connection first: end the peer's stream where it had got to
        (the furthest byte seen), so a worker's answer sent after gearmand was gone (a
        restart) is never delivered; close the flow once the peer's stream reaches it."""
        self._ended.add(flow.key)
        peer = flow.peer
        end = peer.reached()
        if end is None:
            self._close(flow, ts)
            return
        if peer.fin is None or seq_delta(end, peer.fin) < 0:
            peer.fin = end
        self._check_fin(flow, peer, ts)

    def _finish(self, flow: Flow, ts: float) -> None:
        """Close a flow now: deliver what is buffered (reporting its holes) first."""
        if flow.closed:
            return
        for from_peer, half in ((True, flow.peer), (False, flow.server)):
            while half.heap and not half.done:
                self._skip_hole(flow, half, from_peer, ts)
                self._check_fin(flow, half, ts)
                if flow.closed:
                    return
        self._close(flow, ts)

    def _close(self, flow: Flow, ts: float) -> None:
        for half in (flow.peer, flow.server):
            self.ooo_bytes -= half.heap_bytes
            half.heap.clear()
            half.heap_bytes = 0
        flow.closed = True
        self._flows.pop(flow.key, None)
        self._sink.on_close(flow.conn, ts)

    # -- data out of the fast path --------------------------------------------------------

    def _data(
        self, flow: Flow, half: Half, from_peer: bool, seq: int, payload: bytes, ts: float
    ) -> None:
        """Deliver, trim, or buffer a segment that is not simply the next in order."""
        if half.done:
            self.retransmits += 1
            return
        if half.next is None:
            half.next = seq  # first bytes seen of a direction joined mid-stream
        if half.fin is not None and seq_delta(half.fin, seq) < len(payload):
            # bytes past the end of the stream (the peer's, after gearmand closed)
            room = max(seq_delta(half.fin, seq), 0)
            self.bytes_after_close += len(payload) - room
            payload = payload[:room]
            if not payload:
                return
        rel = seq_delta(seq, half.next)
        if rel > 0:
            self.out_of_order += 1
            self._push(half, rel, payload, ts)
            self._settle(flow, half, from_peer, ts)
        elif rel + len(payload) <= 0:
            self.retransmits += 1
            return
        else:
            if rel < 0:
                self.retransmits += 1
                payload = payload[-rel:]
            self._emit(flow, half, from_peer, payload, ts)
            if half.heap:
                self._drain(flow, half, from_peer)
                self._settle(flow, half, from_peer, ts)
        if half.fin is not None:
            self._check_fin(flow, half, ts)
        if self.ooo_bytes > self.ooo_budget:
            self._shed(ts)

    def _emit(self, flow: Flow, half: Half, from_peer: bool, payload: bytes, ts: float) -> None:
        n = len(payload)
        half.next = ((half.next or 0) + n) & MASK
        half.off += n
        self._sink.on_data(flow.conn, from_peer, payload, ts)

    def _push(self, half: Half, rel: int, payload: bytes, ts: float) -> None:
        """Buffer bytes that start ``rel`` bytes after the next expected one."""
        if not half.heap:
            half.off = 0
            half.hole_ts = ts
        elif ts < half.hole_ts:
            half.hole_ts = ts
        heapq.heappush(half.heap, (half.off + rel, payload, ts))
        half.heap_bytes += len(payload)
        self.ooo_bytes += len(payload)

    def _drain(self, flow: Flow, half: Half, from_peer: bool) -> None:
        """Deliver buffered segments that the stream has reached, trimming overlaps.

        Each keeps its own capture time, not the time the hole before it was filled or
        given up: the tracker compares it with the other direction's packets."""
        heap = half.heap
        while heap and heap[0][0] <= half.off:
            start, payload, arrival = heapq.heappop(heap)
            half.heap_bytes -= len(payload)
            self.ooo_bytes -= len(payload)
            skip = half.off - start
            if skip >= len(payload):
                if payload:
                    self.retransmits += 1
                continue
            if skip:
                self.retransmits += 1
                payload = payload[skip:]
            self._emit(flow, half, from_peer, payload, arrival)

    def _settle(self, flow: Flow, half: Half, from_peer: bool, ts: float) -> None:
        """Give up the holes that have waited past the buffer, segment or time bound."""
        while half.heap and self._hole_expired(half, ts):
            self._skip_hole(flow, half, from_peer, ts)

    def _hole_expired(self, half: Half, ts: float) -> bool:
        if half.heap_bytes > self.max_buffer or len(half.heap) > self.max_ooo_segments:
            return True
        if ts - half.hole_ts < self.gap_timeout:
            return False
        # hole_ts is a lower bound (drained segments may have been the oldest): refresh it
        # only now, when it matters, to keep buffering O(log n) per segment.
        half.hole_ts = min(arrival for _start, _payload, arrival in half.heap)
        return ts - half.hole_ts >= self.gap_timeout

    def _skip_hole(self, flow: Flow, half: Half, from_peer: bool, ts: float) -> None:
        """Report the bytes missing before the first buffered segment and move past them."""
        lost = half.heap[0][0] - half.off
        if lost > 0:
            self.gaps += 1
            self.lost_bytes += lost
            self._sink.on_gap(flow.conn, from_peer, ts, lost)
            half.next = ((half.next or 0) + lost) & MASK
            half.off += lost
        self._drain(flow, half, from_peer)

    # -- bounding memory ------------------------------------------------------------------

    def _sweep(self, ts: float) -> None:
        """Periodic pass over all flows: expire idle ones, give up stale holes."""
        self._next_sweep = ts + self.sweep_interval
        idle_before = ts - self.idle_timeout
        closing_before = ts - self.closing_timeout
        unproven_before = ts - self.unproven_timeout
        for flow in list(self._flows.values()):
            closing = flow.peer.done or flow.server.done
            if flow.last_ts < idle_before or (closing and flow.last_ts < closing_before):
                self.flows_expired += 1
                self._finish(flow, ts)
                continue
            if flow.last_ts < unproven_before and not proven(flow):
                self.flows_expired += 1
                self.flows_unproven_expired += 1
                self._finish(flow, ts)
                continue
            for from_peer, half in ((True, flow.peer), (False, flow.server)):
                if half.heap and not flow.closed:
                    self._settle(flow, half, from_peer, ts)
                    self._check_fin(flow, half, ts)

    def _evict(self, ts: float) -> None:
        """Too many flows: close an eighth of them, those gearmand never answered first,
        then those quiet longest."""
        quiet = sorted(self._flows.values(), key=lambda flow: (proven(flow), flow.last_ts))
        for flow in quiet[: max(1, len(quiet) // 8)]:
            self.flows_expired += 1
            self._finish(flow, ts)

    def _shed(self, ts: float) -> None:
        """Over the out-of-order budget: give up the holes of the directions holding the
        most until a quarter of the budget is free (each hole given up is a gap)."""
        target = self.ooo_budget * 3 // 4
        halves = [(half.heap_bytes, flow, from_peer, half) for flow in self._flows.values()
                  for from_peer, half in ((True, flow.peer), (False, flow.server))
                  if half.heap]
        halves.sort(key=lambda item: item[0], reverse=True)
        for _size, flow, from_peer, half in halves:
            while half.heap and not half.done and not flow.closed:
                if self.ooo_bytes <= target:
                    return
                self.budget_gaps += 1
                self._skip_hole(flow, half, from_peer, ts)
                self._check_fin(flow, half, ts)

