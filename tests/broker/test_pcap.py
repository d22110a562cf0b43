"""The pcap stream reader and the TCP segment decoder, on captures written by pcapgen."""

from __future__ import annotations

import pytest

from broker.pcap import PcapStream, TcpDecoder, TcpSegment
from broker.stream import ConnKey

from . import pcapgen
from .replay import handshake, payload_of, run

# -- pcap stream ---------------------------------------------------------------------------


@pytest.mark.parametrize("nanosecond", [False, True])
@pytest.mark.parametrize("big_endian", [False, True])
def test_pcap_stream_byte_orders_and_time_units(nanosecond: bool, big_endian: bool) -> None:
    writer = pcapgen.PcapWriter(nanosecond=nanosecond, big_endian=big_endian)
    writer.add(b"\x01" * 60, ts=1_700_000_000.25)
    writer.add(b"\x02" * 70, ts=1_700_000_001.5)
    stream = PcapStream()
    frames = stream.feed(writer.to_bytes())
    assert stream.linktype == pcapgen.LINKTYPE_ETHERNET
    assert stream.nanosecond is nanosecond
    assert [(ts, bytes(f)) for ts, f in frames] == [
        (pytest.approx(1_700_000_000.25), b"\x01" * 60),
        (pytest.approx(1_700_000_001.5), b"\x02" * 70),
    ]
    assert stream.frames == 2 and stream.error is None


def test_pcap_stream_rejects_garbage_without_raising() -> None:
    stream = PcapStream()
    assert stream.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == []
    assert stream.error is not None and "magic" in stream.error
    assert stream.feed(pcapgen.global_header()) == []


def test_pcap_stream_partial_header_then_rest() -> None:
    data = pcapgen.global_header() + pcapgen.record(1.0, b"abc")
    stream = PcapStream()
    assert stream.feed(data[:10]) == []
    assert stream.linktype is None
    assert [bytes(f) for _ts, f in stream.feed(data[10:])] == [b"abc"]


# -- decoding ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("linktype", "vlan"),
    [
        (pcapgen.LINKTYPE_ETHERNET, False),
        (pcapgen.LINKTYPE_ETHERNET, True),
        (pcapgen.LINKTYPE_LINUX_SLL, False),
        (pcapgen.LINKTYPE_LINUX_SLL2, False),
        (pcapgen.LINKTYPE_RAW, False),
        (pcapgen.LINKTYPE_NULL, False),
        (pcapgen.LINKTYPE_LOOP, False),
    ],
)
@pytest.mark.parametrize("v6", [False, True])
def test_link_types(linktype: int, vlan: bool, v6: bool) -> None:
    conv = pcapgen.Conversation(linktype=linktype, vlan=vlan)
    if v6:
        conv.peer, conv.server = "2001:db8::2", "2001:db8::1"
    request, reply = payload_of(300, 1), payload_of(200, 2)
    frames = [*handshake(conv), conv.data(True, 0, request), conv.data(False, 0, reply)]
    replay = run(frames, writer=pcapgen.PcapWriter(linktype=linktype))
    conn = ConnKey(conv.peer, conv.peer_port, conv.server, conv.server_port)
    assert replay.sink.stream(True, conn) == request
    assert replay.sink.stream(False, conn) == reply
    assert replay.decoder is not None and replay.decoder.malformed == 0


def test_decoder_counts_and_skips_bad_frames() -> None:
    conv = pcapgen.Conversation()
    good = conv.data(True, 0, b"hello")
    udp = pcapgen.link_frame(1, pcapgen.ipv4_packet("1.2.3.4", "5.6.7.8", b"\0" * 16, proto=17))
    fragment = pcapgen.link_frame(
        1, pcapgen.ipv4_packet("1.2.3.4", "5.6.7.8", b"\0" * 40, frag=0x2000)
    )
    arp = b"\xff" * 12 + b"\x08\x06" + b"\0" * 28
    bad_offset = bytearray(conv.data(True, 5, b"x"))
    bad_offset[14 + 20 + 12] = 0x30  # TCP data offset 12 bytes (< 20)
    v6_frag = pcapgen.link_frame(
        1, pcapgen.ipv6_packet("::1", "::2", b"\0" * 30, next_header=44, ext=b"")
    )
    frames = [good[:20], good[:40], udp, fragment, arp, bytes(bad_offset), v6_frag, b"", good]
    decoder = TcpDecoder(pcapgen.LINKTYPE_ETHERNET)
    decoded = [decoder.decode(f) for f in frames]
    assert decoded[:-1] == [None] * (len(frames) - 1)
    last = decoded[-1]
    assert last is not None and last.payload == b"hello" and last.dport == 4730
    assert last.seq == conv.peer_isn + 1 and not last.syn and not last.fin and not last.rst
    assert decoder.stats() == {
        "segments": 1,
        "malformed": 4,
        "truncated": 0,
        "fragments": 2,
        "other": 2,
    }


def test_ipv6_extension_headers_are_skipped() -> None:
    tcp = pcapgen.tcp_header(40000, 4730, 77) + b"payload"
    hop_by_hop = bytes([6, 0]) + b"\x01\x04\0\0\0\0"  # next = TCP, 8 bytes, PadN
    frame = pcapgen.link_frame(
        1, pcapgen.ipv6_packet("::1", "::2", tcp, next_header=0, ext=hop_by_hop)
    )
    segment = TcpDecoder(1).decode(frame)
    assert segment is not None and segment.payload == b"payload" and segment.seq == 77


def _odd_frames(conv: pcapgen.Conversation) -> list[bytes]:
    """Frames the in-place fast path must leave to decode(), and some it takes."""
    good = conv.data(True, 0, b"hello")
    cut = bytearray(conv.data(True, 5, b"0123456789"))
    cut[16:18] = (len(cut) - 14 + 40).to_bytes(2, "big")  # IP total past the frame: truncated
    bad_offset = bytearray(conv.data(True, 5, b"x"))
    bad_offset[14 + 20 + 12] = 0x30  # TCP data offset 12 bytes (< 20)
    big_offset = bytearray(conv.data(True, 6, b"y"))
    big_offset[14 + 20 + 12] = 0xF0  # data offset 60 bytes, past the IP packet
    options = pcapgen.link_frame(1, b"\x46" + pcapgen.ipv4_packet(
        conv.peer, conv.server, b"\0\0\0\0" + pcapgen.tcp_header(40000, 4730, 9) + b"opt")[1:])
    return [
        good, good[:20], good[:40], good[:54], bytes(cut), bytes(bad_offset), bytes(big_offset),
        options, conv.data(False, 0, b"reply"), conv.syn(), conv.fin(True, 5), b"",
        pcapgen.link_frame(1, pcapgen.ipv4_packet("1.2.3.4", "5.6.7.8", b"\0" * 40,
                                                  frag=0x2000)),
        pcapgen.link_frame(1, pcapgen.ipv4_packet("1.2.3.4", "5.6.7.8", b"\0" * 40, proto=17)),
        pcapgen.link_frame(1, pcapgen.ipv4_packet(conv.peer, conv.server, pcapgen.tcp_header(
            40000, 4730, 11) + b"zero total", total=0)),
        good + b"\0" * 6,
    ]


def _segments_of(data: bytes, step: int) -> tuple[PcapStream, list[tuple[float, TcpSegment]]]:
    stream = PcapStream()
    got: list[tuple[float, TcpSegment]] = []

    def keep(ts: float, segment: TcpSegment) -> None:
        got.append((ts, segment))

    for pos in range(0, len(data), step):
        stream.feed_segments(data[pos:pos + step], keep)
    return stream, got


@pytest.mark.parametrize("linktype", [pcapgen.LINKTYPE_ETHERNET, pcapgen.LINKTYPE_LINUX_SLL])
def test_feed_segments_decodes_what_feed_then_decode_does(linktype: int) -> None:
    """Capture's fused path (records decoded in place) against the frame-by-frame one:
    the same segments, times and counters, whatever the frame and the chunking."""
    conv = pcapgen.Conversation(linktype=linktype)
    writer = pcapgen.PcapWriter(linktype=linktype)
    frames = _odd_frames(conv) if linktype == pcapgen.LINKTYPE_ETHERNET else [
        conv.data(True, 0, b"hello"), conv.data(False, 0, b"reply"), conv.syn()]
    for frame in frames:
        writer.add(frame)
    data = writer.to_bytes()
    slow = PcapStream()
    decoder = TcpDecoder(linktype)
    expected = [(ts, seg) for ts, frame in slow.feed(data)
                if (seg := decoder.decode(frame)) is not None]
    for step in (len(data), 7, 1):
        fast, got = _segments_of(data, step)
        assert got == expected
        assert fast.decoder is not None and fast.decoder.stats() == decoder.stats()
        assert fast.frames == slow.frames == len(frames)
    assert len(expected) >= 3
    if linktype == pcapgen.LINKTYPE_ETHERNET:  # the odd frames were there, and counted
        assert decoder.truncated and decoder.malformed and decoder.fragments and decoder.other


def test_ethernet_padding_is_not_payload() -> None:
    conv = pcapgen.Conversation(options=b"")
    frame = conv.data(True, 0, b"")  # 54 bytes: a receiving NIC pads it to 60
    segment = TcpDecoder(1).decode(frame + b"\0" * 6)
    assert segment is not None and segment.payload == b""
