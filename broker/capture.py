"""Capture mode: the passive byte source that never sits in the job path.

``tcpdump -U -w -`` (:mod:`broker.tcpdump`) copies the segments of gearmand's port into a
pipe; :class:`~broker.pcap.PcapStream` cuts the pipe into frames,
:class:`~broker.pcap.TcpDecoder` into TCP segments, and
:class:`~broker.reassembly.TcpReassembler` rebuilds each connection's two byte streams and
reports them, and the gaps it could not recover, to a :class:`~broker.stream.StreamSink`.
:class:`CaptureSource` wires these together and drives them from the pipe.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import time

from broker.pcap import PcapStream, TcpDecoder
from broker.reassembly import TcpReassembler
from broker.stream import StreamSink
from broker.tcpdump import CaptureError, Tcpdump, TcpdumpCommand

CHUNK = 1 << 20


class CaptureSource:
    """Runs tcpdump on ``interface`` for gearmand's ``port`` and feeds ``sink``.

    :meth:`run` blocks the calling thread: it reads tcpdump's pipe in chunks of up to
    1 MiB and pushes them through the pcap parser and the reassembler until tcpdump
    exits; :meth:`stop` (from any thread) ends tcpdump, after which ``run`` drains the
    pipe, closes the remaining flows and returns. tcpdump's own counters (kernel drops)
    are read from its stderr, refreshed every ``stats_interval`` seconds with SIGUSR1.
    """

    def __init__(
        self,
        interface: str,
        port: int,
        sink: StreamSink,
        *,
        tcpdump: str = "tcpdump",
        snaplen: int = 262144,
        buffer_kib: int = 65536,
        immediate: bool = False,
        stats_interval: float | None = 10.0,
        idle_tick: float = 0.5,
        reassembler: TcpReassembler | None = None,
    ) -> None:
        command = TcpdumpCommand(interface, port, tcpdump, snaplen, buffer_kib, immediate)
        self.process = Tcpdump(command)
        self.ready = self.process.ready  # set when tcpdump listens (or has exited)
        self.stats_interval = stats_interval
        self.idle_tick = idle_tick
        self.sink = sink
        self.reassembler = reassembler or TcpReassembler(port, sink)
        self.pcap = PcapStream()

    @property
    def decoder(self) -> TcpDecoder | None:
        """The TCP decoder, once the stream's link type is known."""
        return self.pcap.decoder

    @property
    def captured(self) -> int:
        """Packets tcpdump says it has captured (as of its last report)."""
        return self.process.counters["captured"]

    def stats(self) -> dict[str, int]:
        """Every counter: tcpdump's, the pcap parser's, the decoder's, the reassembler's."""
        out = {**self.process.counters, "frames": self.pcap.frames}
        if self.decoder is not None:
            out.update({f"decode_{k}": v for k, v in self.decoder.stats().items()})
        out.update(self.reassembler.stats())
        return out

    def stop(self) -> None:
        """Ask tcpdump to exit; :meth:`run` returns once its pipe is drained."""
        self.process.stop()

    def run(self) -> None:
        """Capture until :meth:`stop` or until tcpdump exits (CaptureError if it failed)."""
        fd = self.process.start()
        try:
            self._pump(fd)
        finally:
            self.process.reap()
            # the capture ends, not the connections: their buffered bytes are delivered,
            # but a worker still connected must not be recorded as gone
            ending = getattr(self.sink, "on_capture_end", None)
            if ending is not None:
                ending()
            self.reassembler.close_all(time.time())
        failure = self.process.failure()
        if failure is not None:
            raise CaptureError(failure)

    def _pump(self, fd: int) -> None:
        """Read the pipe until EOF; between reads let capture time pass in the reassembler."""
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, CHUNK)  # fewer wakeups, more slack for bursts
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
        timeout_ms = int(self.idle_tick * 1000)
        next_stats = time.monotonic() + (self.stats_interval or float("inf"))
        while True:
            if poller.poll(timeout_ms):
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    return
                self._consume(chunk)
                if self.pcap.error is not None:
                    self.process.terminate()  # a corrupt stream cannot be resynchronised: restart
                    raise CaptureError(f"{self.process.command.tcpdump}: {self.pcap.error}")
            else:
                self.reassembler.tick(time.time())
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + (self.stats_interval or float("inf"))
                self.process.request_stats()
            self.process.overdue(now)

    def _consume(self, chunk: bytes) -> None:
        """The per-segment path: pcap records → TCP segments → reassembler."""
        self.pcap.feed_segments(chunk, self.reassembler.handle)
