"""Proxy mode: an inline asyncio TCP proxy in front of gearmand that copies bytes to a sink.

Used where HQ may not capture packets. Clients connect to the proxy (the public Gearman
port); for each one the proxy opens one connection to gearmand and forwards every byte
unchanged and in order, both ways. It never interprets the stream to forward it: binary
packets and admin text lines alike are opaque bytes here.

Ordering of duties, per chunk: **forward first, then record**. ``data_received`` writes the
chunk to the other transport and only then hands the very same ``bytes`` object to the
sink, through a shipper (:mod:`broker.shippers`). A sink that raises, is slow
(``ship="thread"``) or falls behind never delays or breaks forwarding; in thread mode a
full queue drops the copy (reported to the sink as a gap so its parser resynchronises),
never the traffic. :mod:`broker.launcher` runs proxies in one process or several.

When gearmand closes a connection (EOF from upstream) the sink is told the connection
ended, and nothing the peer sends after that is copied: gearmand never reads it (it does not
half-close; later bytes get a reset), so a worker's answer to a job that died with a
restarted gearmand must not reach the tracker. The half-close is still passed on.

Flow control is end to end: if one side's write buffer passes a high-water mark, the proxy
stops reading from the opposite side until it drains, so a slow reader never makes the
proxy buffer unbounded memory; TCP back-pressure reaches the fast sender instead.

Protocols, not streams, because a stream reader adds a buffer copy, a future and a task
switch per chunk; the Protocol callback path is the cheapest asyncio offers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, cast

from broker.shippers import QUEUE_MAX, ShipMode, Shipper, make_shipper
from broker.stream import ConnKey, StreamSink

log = logging.getLogger(__name__)

Address = tuple[str, int]

#: A sink that batches gets its partial batch flushed this often (inline shipping).
FLUSH_EVERY_S = 0.005
#: Write-buffer high-water mark per transport. 256 KiB keeps pipelined bursts flowing
#: without a pause, while bounding memory at ~0.5 MiB per proxied connection.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
CONNECT_TIMEOUT = 5.0


_now = time.time


_UNWIRED = ConnKey("", 0, "", 0)


def _no_ship(conn: ConnKey, from_peer: bool, data: bytes, ts: float) -> None:
    """Placeholder until a pair is wired (no bytes are forwarded before that)."""


def _set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Disable Nagle: Gearman is request/response, so coalescing only adds latency."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Half(asyncio.Protocol):
    """One side of a proxied pair: reads from its transport, writes to the other side's.

    ``from_peer`` is True for the downstream (client/worker) side, whose bytes go to
    gearmand. Flow control crosses over: when *this* side's transport has too much to
    write, the *other* side stops reading.
    """

    other: _Half

    def __init__(self, pair: _Pair, from_peer: bool) -> None:
        self.pair = pair
        self.from_peer = from_peer
        self.transport: asyncio.Transport | None = None
        self.out: asyncio.Transport | None = None  # the other side's transport
        self.eof = False
        self.lost = False
        self.nbytes = 0
        # Bound once the pair is wired, so the hot path is one attribute load per call.
        self.conn = _UNWIRED
        self.ship: Callable[[ConnKey, bool, bytes, float], None] = _no_ship

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport quacks like asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        _set_nodelay(transport)
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        self.pair.made(self)

    def data_received(self, data: bytes) -> None:
        out = self.out
        if out is None:  # downstream bytes before upstream is up: hold them, stop reading
            self.pair.early.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        out.write(data)  # forward first ...
        self.nbytes += len(data)
        self.ship(self.conn, self.from_peer, data, _now())  # ... then copy

    def eof_received(self) -> bool:
        self.eof = True
        return self.pair.half_closed(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pair.lost(self, exc)

    def pause_writing(self) -> None:
        self.pair.proxy.pauses += 1
        t = self.other.transport
        if t is not None and not t.is_closing():
            t.pause_reading()

    def resume_writing(self) -> None:
        t = self.other.transport
        if t is not None and not t.is_closing():
            t.resume_reading()


class _Pair:
    """A downstream connection and its one upstream connection, and their shared fate."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.down = _Half(self, from_peer=True)
        self.up = _Half(self, from_peer=False)
        self.down.other, self.up.other = self.up, self.down
        self.conn: ConnKey | None = None
        self.early: list[bytes] = []
        self.opened = False
        self.finished = False
        self.reported = False  # the sink was told the connection ended

    def made(self, half: _Half) -> None:
        if half is self.down:
            assert half.transport is not None
            # Until upstream is connected. uvloop starts reading right after
            # connection_made and ignores this; data_received pauses again then.
            half.transport.pause_reading()
            self.proxy.connection_accepted(self)

    def upstream_ready(self) -> None:
        """Both ends are up: wire them together, announce, replay, start reading."""
        down, up = self.down, self.up
        assert down.transport is not None and up.transport is not None
        if down.lost:
            up.transport.close()
            return
        down.out, up.out = up.transport, down.transport
        peer = down.transport.get_extra_info("peername") or ("?", 0)
        host, port = self.proxy.upstream
        self.conn = down.conn = up.conn = ConnKey(str(peer[0]), int(peer[1]), host, port)
        self.opened = True
        shipper = self.proxy.shipper
        shipper.open(self.conn, _now())
        down.ship = up.ship = shipper.data
        for data in self.early:
            down.data_received(data)
        self.early.clear()
        if down.eof:
            self.half_closed(down)
        else:
            down.transport.resume_reading()

    def half_closed(self, half: _Half) -> bool:
        """EOF from one side: pass it on as a half-close; close both once both saw EOF."""
        out = half.out
        if out is None:  # downstream EOF while upstream connects: pass it on when wired
            return half.from_peer
        if not half.from_peer:
            self.server_closed()
        if out.is_closing():
            return False
        if half.other.eof:
            out.close()
            return False
        if out.can_write_eof():
            out.write_eof()
            return True
        out.close()
        return False

    def server_closed(self) -> None:
        """gearmand closed its side: copy nothing more, and report the close now."""
        if self.reported or self.conn is None:
            return
        self.reported = True
        self.down.ship = self.up.ship = _no_ship
        self.proxy.shipper.close(self.conn, _now())

    def lost(self, half: _Half, exc: Exception | None) -> None:
        """One side is gone: an error aborts the other, a clean close lets it flush."""
        other = half.other.transport
        if other is not None and not other.is_closing():
            if exc is None:
                other.close()
            else:
                other.abort()
        if half.other.lost or half.other.transport is None:
            self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.proxy.connection_finished(self)


class Proxy:
    """Listens on ``listen`` and proxies each connection to ``upstream``, copying to ``sink``.

    ``ship="inline"`` (default, measured fastest with gearmand — see the module's bench)
    calls the sink from the loop; ``ship="thread"`` hands copies to a daemon thread through
    a bounded deque (``queue_max``) and drops copies, never traffic, when it is full.
    """

    def __init__(
        self,
        listen: Address,
        upstream: Address,
        sink: StreamSink,
        *,
        reuse_port: bool = False,
        ship: ShipMode = "inline",
        queue_max: int = QUEUE_MAX,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.listen = listen
        self.upstream = upstream
        self.reuse_port = reuse_port
        self.connect_timeout = connect_timeout
        self.shipper: Shipper = make_shipper(sink, ship, queue_max)
        self.ship = ship
        self.server: asyncio.Server | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.pairs: set[_Pair] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.closed_from_peer = 0  # byte totals of finished pairs; live ones are summed
        self.closed_to_peer = 0
        self.upstream_connect_failures = 0
        self.pauses = 0

    @property
    def port(self) -> int:
        """The bound port (useful with ``listen=(host, 0)``)."""
        assert self.server is not None and self.server.sockets
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and listen; connections are served from then on by the running loop."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _Pair(self).down,
            self.listen[0],
            self.listen[1],
            reuse_address=True,
            reuse_port=self.reuse_port or None,
            backlog=1024,
        )
        log.info("proxy listening on %s:%d -> %s:%d", self.listen[0], self.port,
                 *self.upstream)
        flush = getattr(self.shipper.guard.sink, "flush", None)
        if flush is not None and self.ship == "inline":
            self._flusher = asyncio.get_running_loop().create_task(self._flush_every(flush))

    async def _flush_every(self, flush: Callable[[], None]) -> None:
        """A sink that batches (``broker.pipe.PipeSink``) gets its partial batch out within
        a few milliseconds even when traffic stops."""
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            try:
                flush()
            except Exception:
                self.shipper.guard.failed("flush")

    async def serve_forever(self) -> None:
        """Start if needed and serve until cancelled; closes everything on the way out."""
        if self.server is None:
            await self.start()
        assert self.server is not None
        try:
            await self.server.serve_forever()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop listening, close every proxied connection, flush the sink queue."""
        if self._flusher is not None:
            self._flusher.cancel()
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        for pair in list(self.pairs):
            for half in (pair.down, pair.up):
                if half.transport is not None:
                    half.transport.close()
        await asyncio.sleep(0)
        for pair in list(self.pairs):
            pair.finish()
        self.shipper.stop()

    def connection_accepted(self, pair: _Pair) -> None:
        self.connections += 1
        self.pairs.add(pair)
        task = asyncio.get_running_loop().create_task(self._connect_upstream(pair))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect_upstream(self, pair: _Pair) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.upstream
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: pair.up, host, port), self.connect_timeout
            )
        except (TimeoutError, OSError) as exc:
            self._upstream_failed(pair, exc)
            return
        pair.upstream_ready()

    def _upstream_failed(self, pair: _Pair, exc: BaseException) -> None:
        self.upstream_connect_failures += 1
        if self.upstream_connect_failures == 1 or self.upstream_connect_failures % 100 == 0:
            log.warning("upstream %s:%d unreachable (%s); %d failures", *self.upstream, exc,
                        self.upstream_connect_failures)
        if pair.down.transport is not None:
            pair.down.transport.abort()
        pair.finish()

    def connection_finished(self, pair: _Pair) -> None:
        self.pairs.discard(pair)
        self.closed_from_peer += pair.down.nbytes
        self.closed_to_peer += pair.up.nbytes
        if pair.opened and pair.conn is not None and not pair.reported:
            self.shipper.close(pair.conn, time.time())

    def stats(self) -> dict[str, Any]:
        """Counters for /metrics; call it on the proxy's loop (it walks the live pairs)."""
        return {
            "connections": self.connections,
            "active": len(self.pairs),
            "bytes_from_peer": self.closed_from_peer + sum(p.down.nbytes for p in self.pairs),
            "bytes_to_peer": self.closed_to_peer + sum(p.up.nbytes for p in self.pairs),
            "upstream_connect_failures": self.upstream_connect_failures,
            "read_pauses": self.pauses,
            "ship": self.ship,
            **self.shipper.stats(),
        }
