"""Gearman's binary protocol by hand, for tests that speak it on a raw socket (to send what
no real client sends, or to hold a connection open): a packet's bytes, and reading one
packet back."""

from __future__ import annotations

import socket
import struct

REQ = b"\0REQ"
RES = b"\0RES"


def packet(ptype: int, *args: bytes, magic: bytes = REQ) -> bytes:
    """One packet: ``magic``, type, size, then ``args`` joined by NUL."""
    body = b"\0".join(args)
    return magic + struct.pack(">II", ptype, len(body)) + body


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def read_packet(sock: socket.socket) -> tuple[int, bytes]:
    """The next packet on ``sock``: its type and its body."""
    head = recv_exactly(sock, 12)
    _, ptype, size = struct.unpack(">4sII", head)
    return ptype, recv_exactly(sock, size)
