"""Craft libpcap byte streams for tests: global header, records, L2/IP/TCP frames.

Written independently of ``broker.pcap`` (struct.pack on the formats from the libpcap and
RFC documents) so the tests check the reader against the format, not against itself.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276

# Linux-style TCP options: NOP NOP timestamps (12 bytes, so data offset = 8 words).
TIMESTAMP_OPTIONS = b"\x01\x01\x08\x0a" + struct.pack("!II", 123456, 654321)


def global_header(
    linktype: int = LINKTYPE_ETHERNET,
    *,
    nanosecond: bool = False,
    big_endian: bool = False,
    snaplen: int = 262144,
) -> bytes:
    order = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    return struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)


def record(
    ts: float,
    frame: bytes,
    *,
    nanosecond: bool = False,
    big_endian: bool = False,
    wire_len: int | None = None,
) -> bytes:
    order = ">" if big_endian else "<"
    sec = int(ts)
    frac = round((ts - sec) * (1e9 if nanosecond else 1e6))
    wire = len(frame) if wire_len is None else wire_len
    return struct.pack(order + "IIII", sec, frac, len(frame), wire) + frame


def tcp_header(
    sport: int,
    dport: int,
    seq: int,
    ack: int = 0,
    flags: int = ACK,
    *,
    options: bytes = TIMESTAMP_OPTIONS,
) -> bytes:
    options += b"\x00" * (-len(options) % 4)
    offset_words = (20 + len(options)) // 4
    return (
        struct.pack(
            "!HHIIBBHHH",
            sport,
            dport,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            offset_words << 4,
            flags,
            65535,
            0,
            0,
        )
        + options
    )


def ipv4_packet(
    src: str, dst: str, l4: bytes, *, proto: int = 6, frag: int = 0x4000, total: int | None = None
) -> bytes:
    length = 20 + len(l4) if total is None else total
    return (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            length,
            1,
            frag,
            64,
            proto,
            0,
            ipaddress.IPv4Address(src).packed,
            ipaddress.IPv4Address(dst).packed,
        )
        + l4
    )


def ipv6_packet(src: str, dst: str, l4: bytes, *, next_header: int = 6, ext: bytes = b"") -> bytes:
    return (
        struct.pack(
            "!IHBB16s16s",
            6 << 28,
            len(ext) + len(l4),
            next_header,
            64,
            ipaddress.IPv6Address(src).packed,
            ipaddress.IPv6Address(dst).packed,
        )
        + ext
        + l4
    )


def link_frame(linktype: int, packet: bytes, *, vlan: bool = False) -> bytes:
    """Wrap an IP packet in the link-layer header of ``linktype``."""
    v6 = packet[0] >> 4 == 6
    ethertype = 0x86DD if v6 else 0x0800
    if linktype == LINKTYPE_ETHERNET:
        tag = struct.pack("!HH", 0x8100, 42) if vlan else b""
        return b"\x02" * 6 + b"\x04" * 6 + tag + struct.pack("!H", ethertype) + packet
    if linktype == LINKTYPE_LINUX_SLL:
        return struct.pack("!HHH8sH", 0, 772, 6, b"\0" * 8, ethertype) + packet
    if linktype == LINKTYPE_LINUX_SLL2:
        return struct.pack("!HHIHBB8s", ethertype, 0, 1, 772, 0, 6, b"\0" * 8) + packet
    if linktype == LINKTYPE_NULL:
        return struct.pack("<I", 30 if v6 else 2) + packet  # host order, BSD values
    if linktype == LINKTYPE_LOOP:
        return struct.pack("!I", 24 if v6 else 2) + packet
    if linktype == LINKTYPE_RAW:
        return packet
    raise ValueError(linktype)


@dataclass
class Conversation:
    """One TCP connection between a peer and a server, building frames for either side."""

    peer: str = "10.0.0.2"
    peer_port: int = 40000
    server: str = "10.0.0.1"
    server_port: int = 4730
    peer_isn: int = 1000
    server_isn: int = 5000000
    linktype: int = LINKTYPE_ETHERNET
    options: bytes = TIMESTAMP_OPTIONS
    vlan: bool = False

    def frame(
        self, from_peer: bool, seq: int, payload: bytes = b"", flags: int = ACK | PSH, ack: int = 0
    ) -> bytes:
        """A frame with an absolute sequence number."""
        if from_peer:
            src, sport, dst, dport = self.peer, self.peer_port, self.server, self.server_port
        else:
            src, sport, dst, dport = self.server, self.server_port, self.peer, self.peer_port
        segment = tcp_header(sport, dport, seq, ack, flags, options=self.options) + payload
        v6 = ":" in src
        packet = ipv6_packet(src, dst, segment) if v6 else ipv4_packet(src, dst, segment)
        return link_frame(self.linktype, packet, vlan=self.vlan)

    def data(self, from_peer: bool, offset: int, payload: bytes, flags: int = ACK | PSH) -> bytes:
        """A frame carrying ``payload`` at stream ``offset`` (0 = first byte after SYN)."""
        isn = self.peer_isn if from_peer else self.server_isn
        return self.frame(from_peer, isn + 1 + offset, payload, flags)

    def syn(self) -> bytes:
        return self.frame(True, self.peer_isn, flags=SYN)

    def syn_ack(self) -> bytes:
        return self.frame(False, self.server_isn, flags=SYN | ACK, ack=self.peer_isn + 1)

    def fin(self, from_peer: bool, offset: int) -> bytes:
        return self.data(from_peer, offset, b"", FIN | ACK)

    def rst(self, from_peer: bool, offset: int) -> bytes:
        return self.data(from_peer, offset, b"", RST | ACK)


@dataclass
class PcapWriter:
    """Accumulates records into one pcap byte stream."""

    linktype: int = LINKTYPE_ETHERNET
    nanosecond: bool = False
    big_endian: bool = False
    ts: float = 1_700_000_000.0
    step: float = 0.001
    records: list[bytes] = field(default_factory=list)

    def add(self, frame: bytes, ts: float | None = None) -> float:
        if ts is None:
            self.ts += self.step
            ts = self.ts
        self.records.append(
            record(ts, frame, nanosecond=self.nanosecond, big_endian=self.big_endian)
        )
        return ts

    def extend(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.add(frame)

    def to_bytes(self) -> bytes:
        header = global_header(
            self.linktype, nanosecond=self.nanosecond, big_endian=self.big_endian
        )
        return header + b"".join(self.records)
