"""Carrying a byte source's callbacks to another process.

The proxy forwards in one process; parsing, tracking and ingest (pure Python, GIL-bound)
run in a child, so they do not share the forwarding loop's interpreter. :class:`PipeSink`
is the proxy side: a :class:`~broker.stream.StreamSink`, called from the event loop, that
batches callbacks and writes each batch as one length-prefixed pickle to a non-blocking
pipe. It never blocks: what the pipe cannot take waits in a bounded backlog, and past that
the copies are dropped and the loss reported to the child as ``on_gap``
(:mod:`broker.loss`) — forwarding never waits for the child. :func:`replay` is the child
side: it feeds each batch to a real sink.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import struct
from typing import Any

from .loss import Losses
from .stream import ConnKey, StreamSink

OPEN, DATA, GAP, CLOSE, OPEN_MID = 0, 1, 2, 3, 4
#: a batch is written when it holds this many callbacks, or at the next timer flush
BATCH = 256
#: bytes waiting for the pipe before copies are dropped (never forwarding)
BACKLOG_MAX = 32 << 20
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
FRAME = struct.Struct(">I")

def make_pipe() -> tuple[int, int]:
    """(read fd, write fd): a pipe as large as the kernel allows, non-blocking to write."""
    read_fd, write_fd = os.pipe()
    # an unprivileged limit below 1 MiB leaves the default size: it works, with more backlog
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, PIPE_SIZE)
    os.set_blocking(write_fd, False)
    return read_fd, write_fd


class PipeSink:
    """Sends callbacks to another process. Call it from one thread (the event loop),
    and :meth:`flush` from a timer in the same loop."""

    def __init__(self, write_fd: int) -> None:
        self._fd = write_fd
        self._batch: list[tuple[Any, ...]] = []
        self._backlog = bytearray()
        self.losses = Losses()
        self.batches = 0

    @property
    def counters(self) -> dict[str, int]:
        return {"batches": self.batches, **self.losses.stats()}

    def on_open(self, conn: ConnKey, ts: float, *, mid_stream: bool = False) -> None:
        self._add((OPEN_MID if mid_stream else OPEN, conn, ts))

    def on_data(self, conn: ConnKey, from_peer: bool, data: bytes, ts: float) -> None:
        if len(self._backlog) > BACKLOG_MAX:
            self.losses.drop(conn, from_peer, len(data))
            return
        if self.losses.owed:
            self.losses.settle(conn, from_peer, ts, self.on_gap)
        self._add((DATA, conn, ts, from_peer, data))

    def on_gap(self, conn: ConnKey, from_peer: bool, ts: float, lost: int) -> None:
        self._add((GAP, conn, ts, from_peer, lost))

    def on_close(self, conn: ConnKey, ts: float) -> None:
        self.losses.settle_both(conn, ts, self.on_gap)
        self._add((CLOSE, conn, ts))

    def _add(self, item: tuple[Any, ...]) -> None:
        self._batch.append(item)
        if len(self._batch) >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Frame the batch, then write as much of the backlog as the pipe takes now."""
        if self._batch:
            body = pickle.dumps(self._batch, protocol=pickle.HIGHEST_PROTOCOL)
            self._backlog += FRAME.pack(len(body))
            self._backlog += body
            self._batch = []
            self.batches += 1
        if self._backlog:
            try:
                written = os.write(self._fd, self._backlog)
            except BlockingIOError:
                return
            del self._backlog[:written]

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    def close(self) -> None:
        """Send everything (blocking now: forwarding has stopped) and close the pipe."""
        self.flush()
        os.set_blocking(self._fd, True)
        while self._backlog:
            written = os.write(self._fd, self._backlog)
            del self._backlog[:written]
        os.close(self._fd)


def _frames(read_fd: int) -> Any:
    """Each batch written by a PipeSink, until the writer closes the pipe."""
    buf = bytearray()
    while True:
        chunk = os.read(read_fd, 1 << 20)
        if not chunk:
            return
        buf += chunk
        while len(buf) >= FRAME.size:
            (size,) = FRAME.unpack_from(buf)
            if len(buf) < FRAME.size + size:
                break
            yield pickle.loads(bytes(buf[FRAME.size:FRAME.size + size]))  # our own frames
            del buf[:FRAME.size + size]


def replay(read_fd: int, sink: StreamSink) -> int:
    """Feed ``sink`` with every batch that arrives; returns the callbacks replayed.

    A connection's key is pickled once per batch (pickle's memo: the proxy hands the
    same ConnKey object with each chunk), and arrives as one object per batch."""
    count = 0
    for batch in _frames(read_fd):
        for item in batch:
            kind, key, ts = item[0], item[1], item[2]
            if kind == DATA:
                sink.on_data(key, item[3], item[4], ts)
            elif kind in (OPEN, OPEN_MID):
                sink.on_open(key, ts, mid_stream=kind == OPEN_MID)
            elif kind == GAP:
                sink.on_gap(key, item[3], ts, item[4])
            else:
                sink.on_close(key, ts)
        count += len(batch)
    return count
