"""The interface between a byte source (capture or proxy) and whatever consumes its bytes.

A byte source sees TCP connections between Gearman peers and gearmand. For each one it
reports, in order: ``on_open`` once, ``on_data`` for every chunk of bytes in either
direction (in stream order per direction), ``on_gap`` when bytes of a direction were lost
(the consumer must resynchronise that direction), and ``on_close`` once.

Neither side does I/O through this interface; the consumer must return quickly because the
source calls it from its hot loop.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class ConnKey(NamedTuple):
    """One TCP connection, named by the peer (client or worker) side and the server side.

    A NamedTuple (immutable like a frozen dataclass): it is a dict key on every packet's
    path (parsers, tracker connections, waiters), and a tuple hashes and compares in C
    where a dataclass calls its Python ``__hash__``/``__eq__``.
    """

    peer_host: str
    peer_port: int
    server_host: str
    server_port: int

    @property
    def peer(self) -> str:
        return f"{self.peer_host}:{self.peer_port}"

    def __str__(self) -> str:
        return f"{self.peer}->{self.server_host}:{self.server_port}"


class StreamSink(Protocol):
    def on_open(self, conn: ConnKey, ts: float, *, mid_stream: bool = False) -> None:
        """A connection starts. ``mid_stream`` is True when the source joined a connection
        that was already established (no SYN seen), so its first bytes may be mid-packet."""

    def on_data(self, conn: ConnKey, from_peer: bool, data: bytes, ts: float) -> None:
        """Bytes in one direction: ``from_peer`` is True for peer→gearmand."""

    def on_gap(self, conn: ConnKey, from_peer: bool, ts: float, lost: int) -> None:
        """``lost`` bytes (or -1 when unknown) of one direction are missing."""

    def on_close(self, conn: ConnKey, ts: float) -> None:
        """The connection ended (FIN/RST in capture, EOF in the proxy)."""
