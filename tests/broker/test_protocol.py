"""The sans-IO Gearman codec: golden bytes, chunking, admin lines, junk and limits.

No sockets: every test builds bytes, feeds them to a :class:`Parser` and looks at the items
it returns. Expected bytes are written out by hand from the protocol document
(``\\0REQ``/``\\0RES``, a big-endian type and body size, NUL-separated arguments), not
computed with the code under test.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.protocol import (
    ARG_COUNT,
    AdminLine,
    DecodeError,
    Item,
    Packet,
    PacketType,
    Parser,
    req,
    res,
)

T = PacketType
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# The argument counts of the Gearman protocol document, written out independently of
# broker.protocol.ARG_COUNT (the last argument is opaque data and may contain NULs).
SPEC_ARGS = {
    1: ("CAN_DO", 1), 2: ("CANT_DO", 1), 3: ("RESET_ABILITIES", 0), 4: ("PRE_SLEEP", 0),
    6: ("NOOP", 0), 7: ("SUBMIT_JOB", 3), 8: ("JOB_CREATED", 1), 9: ("GRAB_JOB", 0),
    10: ("NO_JOB", 0), 11: ("JOB_ASSIGN", 3), 12: ("WORK_STATUS", 3),
    13: ("WORK_COMPLETE", 2), 14: ("WORK_FAIL", 1), 15: ("GET_STATUS", 1),
    16: ("ECHO_REQ", 1), 17: ("ECHO_RES", 1), 18: ("SUBMIT_JOB_BG", 3), 19: ("ERROR", 2),
    20: ("STATUS_RES", 5), 21: ("SUBMIT_JOB_HIGH", 3), 22: ("SET_CLIENT_ID", 1),
    23: ("CAN_DO_TIMEOUT", 2), 24: ("ALL_YOURS", 0), 25: ("WORK_EXCEPTION", 2),
    26: ("OPTION_REQ", 1), 27: ("OPTION_RES", 1), 28: ("WORK_DATA", 2),
    29: ("WORK_WARNING", 2), 30: ("GRAB_JOB_UNIQ", 0), 31: ("JOB_ASSIGN_UNIQ", 4),
    32: ("SUBMIT_JOB_HIGH_BG", 3), 33: ("SUBMIT_JOB_LOW", 3), 34: ("SUBMIT_JOB_LOW_BG", 3),
    35: ("SUBMIT_JOB_SCHED", 8), 36: ("SUBMIT_JOB_EPOCH", 4), 37: ("SUBMIT_REDUCE_JOB", 4),
    38: ("SUBMIT_REDUCE_JOB_BACKGROUND", 4), 39: ("GRAB_JOB_ALL", 0),
    40: ("JOB_ASSIGN_ALL", 5), 41: ("GET_STATUS_UNIQUE", 1), 42: ("STATUS_RES_UNIQUE", 6),
}

# (packet, the bytes on the wire), every byte written by hand.
GOLDEN = [
    pytest.param(
        req(T.SUBMIT_JOB, b"reverse", b"u-1", b"hello"),
        b"\0REQ" b"\x00\x00\x00\x07" b"\x00\x00\x00\x11" b"reverse\0u-1\0hello",
        id="SUBMIT_JOB",
    ),
    pytest.param(
        res(T.JOB_CREATED, b"H:lap:1"),
        b"\0RES" b"\x00\x00\x00\x08" b"\x00\x00\x00\x07" b"H:lap:1",
        id="JOB_CREATED",
    ),
    pytest.param(
        res(T.JOB_ASSIGN_UNIQ, b"H:lap:1", b"reverse", b"u-1", b"hello"),
        b"\0RES" b"\x00\x00\x00\x1f" b"\x00\x00\x00\x19" b"H:lap:1\0reverse\0u-1\0hello",
        id="JOB_ASSIGN_UNIQ",
    ),
    pytest.param(
        req(T.WORK_STATUS, b"H:lap:1", b"3", b"10"),
        b"\0REQ" b"\x00\x00\x00\x0c" b"\x00\x00\x00\x0c" b"H:lap:1\x003\x0010",
        id="WORK_STATUS",
    ),
    pytest.param(
        req(T.WORK_COMPLETE, b"H:lap:1", b"\0a\0\0b\0"),
        b"\0REQ" b"\x00\x00\x00\x0d" b"\x00\x00\x00\x0e" b"H:lap:1\0\0a\0\0b\0",
        id="WORK_COMPLETE-nul-in-data",
    ),
    pytest.param(
        res(T.STATUS_RES_UNIQUE, b"u-1", b"1", b"0", b"0", b"0", b"2"),
        b"\0RES" b"\x00\x00\x00\x2a" b"\x00\x00\x00\x0d" b"u-1\x001\x000\x000\x000\x002",
        id="STATUS_RES_UNIQUE",
    ),
    pytest.param(
        res(T.NOOP),
        b"\0RES" b"\x00\x00\x00\x06" b"\x00\x00\x00\x00",
        id="NOOP-empty-body",
    ),
    pytest.param(
        req(T.ECHO_REQ, b"ping\0pong"),
        b"\0REQ" b"\x00\x00\x00\x10" b"\x00\x00\x00\x09" b"ping\0pong",
        id="ECHO_REQ-single-arg-keeps-nul",
    ),
    pytest.param(
        req(T.SUBMIT_JOB_EPOCH, b"f", b"", b"1700000000", b"x"),
        b"\0REQ" b"\x00\x00\x00\x24" b"\x00\x00\x00\x0f" b"f\0\x001700000000\0x",
        id="SUBMIT_JOB_EPOCH-empty-unique",
    ),
    pytest.param(
        res(T.ERROR, b"ERR_NOT_IMPL", b"no sched"),
        b"\0RES" b"\x00\x00\x00\x13" b"\x00\x00\x00\x15" b"ERR_NOT_IMPL\0no sched",
        id="ERROR",
    ),
]


def feed_bytewise(parser: Parser, data: bytes) -> list[Item]:
    out: list[Item] = []
    for i in range(len(data)):
        out += parser.feed(data[i : i + 1])
    return out


def feed_cut(parser: Parser, data: bytes, cuts: list[int]) -> list[Item]:
    out: list[Item] = []
    prev = 0
    for cut in [*sorted(cuts), len(data)]:
        cut = min(max(cut, prev), len(data))
        out += parser.feed(data[prev:cut])
        prev = cut
    return out


def not_errors(items: list[Item]) -> list[Item]:
    return [i for i in items if not isinstance(i, DecodeError)]


def skipped(items: list[Item]) -> int:
    return sum(i.skipped for i in items if isinstance(i, DecodeError))


def sample_args(ptype: int) -> tuple[bytes, ...]:
    count = ARG_COUNT[ptype]
    if count == 0:
        return ()
    head = tuple(f"arg{i}-{ptype}".encode() for i in range(count - 1))
    return (*head, b"data\0with\0nuls " + bytes([ptype]))


# ------------------------------------------------------------------------- the table


def test_packet_types_are_the_protocol_document() -> None:
    assert {int(t) for t in PacketType} == set(range(1, 43)) - {5}
    assert {int(t): (t.name, ARG_COUNT[t]) for t in PacketType} == SPEC_ARGS
    assert set(ARG_COUNT) == set(PacketType)


# ------------------------------------------------------------------------ golden bytes


@pytest.mark.parametrize(("packet", "wire"), GOLDEN)
def test_golden_encode(packet: Packet, wire: bytes) -> None:
    assert packet.to_bytes() == wire


@pytest.mark.parametrize(("packet", "wire"), GOLDEN)
def test_golden_decode_whole_and_bytewise(packet: Packet, wire: bytes) -> None:
    assert Parser().feed(wire) == [packet]
    parser = Parser()
    assert feed_bytewise(parser, wire) == [packet]
    assert parser.buffered == 0


def test_golden_stream_of_all_golden_packets() -> None:
    packets = [p.values[0] for p in GOLDEN]
    wire = b"".join(p.values[1] for p in GOLDEN)
    assert Parser().feed(wire) == packets
    assert feed_bytewise(Parser(), wire) == packets


def test_nothing_is_returned_until_the_packet_is_complete() -> None:
    wire = req(T.SUBMIT_JOB, b"reverse", b"", b"hello").to_bytes()
    parser = Parser()
    for i in range(len(wire) - 1):
        assert parser.feed(wire[i : i + 1]) == []
    assert parser.buffered == len(wire) - 1
    assert parser.feed(wire[-1:]) == [req(T.SUBMIT_JOB, b"reverse", b"", b"hello")]


def test_feed_accepts_memoryview_and_bytearray() -> None:
    wire = res(T.JOB_CREATED, b"H:lap:7").to_bytes() * 2
    assert Parser().feed(memoryview(wire)) == [res(T.JOB_CREATED, b"H:lap:7")] * 2
    assert Parser().feed(bytearray(wire)) == [res(T.JOB_CREATED, b"H:lap:7")] * 2


@pytest.mark.parametrize("ptype", list(PacketType), ids=lambda t: t.name)
@pytest.mark.parametrize("is_request", [True, False], ids=["REQ", "RES"])
def test_every_packet_type_round_trips(ptype: PacketType, is_request: bool) -> None:
    packet = Packet(is_request, ptype, sample_args(ptype))
    wire = packet.to_bytes()
    body = b"\0".join(packet.args)
    magic = b"\0REQ" if is_request else b"\0RES"
    assert wire == magic + int(ptype).to_bytes(4, "big") + len(body).to_bytes(4, "big") + body
    assert Parser().feed(wire) == [packet]
    assert feed_bytewise(Parser(), wire) == [packet]
    assert packet.name == ptype.name


def test_unknown_type_name() -> None:
    assert Packet(True, 99, ()).name == "UNKNOWN_99"


# ------------------------------------------------------------------------- admin text


def test_admin_command_line() -> None:
    assert Parser().feed(b"status\n") == [AdminLine(b"status")]


def test_admin_crlf_line_ending_is_stripped() -> None:
    assert Parser().feed(b"workers\r\nversion\r\n") == [AdminLine(b"workers"),
                                                        AdminLine(b"version")]


def test_admin_multiline_reply_ends_with_dot() -> None:
    reply = b"reverse\t3\t1\t2\nsleep\t0\t0\t1\n.\n"
    assert Parser().feed(reply) == [
        AdminLine(b"reverse\t3\t1\t2"), AdminLine(b"sleep\t0\t0\t1"), AdminLine(b"."),
    ]
    assert feed_bytewise(Parser(), reply) == Parser().feed(reply)


def test_admin_line_waits_for_its_newline() -> None:
    parser = Parser()
    assert parser.feed(b"show jo") == []
    assert parser.feed(b"bs\r") == []
    assert parser.feed(b"\n") == [AdminLine(b"show jobs")]


def test_admin_line_to_bytes() -> None:
    assert AdminLine(b"cancel job H:lap:1").to_bytes() == b"cancel job H:lap:1\n"


def test_text_and_binary_mixed_in_one_stream() -> None:
    stream = (
        b"status\n"
        + req(T.ECHO_REQ, b"hi").to_bytes()
        + b"getpid\r\n"
        + res(T.NOOP).to_bytes()
        + res(T.JOB_CREATED, b"H:lap:2").to_bytes()
        + b".\n"
    )
    expected = [
        AdminLine(b"status"), req(T.ECHO_REQ, b"hi"), AdminLine(b"getpid"), res(T.NOOP),
        res(T.JOB_CREATED, b"H:lap:2"), AdminLine(b"."),
    ]
    assert Parser().feed(stream) == expected
    assert feed_bytewise(Parser(), stream) == expected


# ------------------------------------------------------------------ chunking invariance


def long_mixed_stream(seed: int, count: int = 300) -> tuple[bytes, list[Item]]:
    rng = random.Random(seed)
    items: list[Item] = []
    types = list(PacketType)
    for n in range(count):
        if rng.random() < 0.15:
            line = rng.choice([b"status", b"workers", b"show jobs", b"version", b"."])
            items.append(AdminLine(line + str(n).encode() * rng.randint(0, 1)))
            continue
        ptype = rng.choice(types)
        arity = ARG_COUNT[ptype]
        args = [bytes(rng.choice(b"abcXYZ:019") for _ in range(rng.randint(0, 8)))
                for _ in range(max(arity - 1, 0))]
        if arity:
            args.append(rng.randbytes(rng.randint(0, 300)))
        items.append(Packet(rng.random() < 0.5, ptype, tuple(args)))
    wire = b"".join(i.to_bytes() for i in items)
    return wire, items


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_long_stream_whole_bytewise_and_random_chunks_agree(seed: int) -> None:
    wire, items = long_mixed_stream(seed)
    assert Parser().feed(wire) == items
    assert feed_bytewise(Parser(), wire) == items
    rng = random.Random(seed * 7919)
    for _ in range(20):
        cuts = sorted(rng.randrange(len(wire)) for _ in range(rng.randint(1, 200)))
        parser = Parser()
        assert feed_cut(parser, wire, cuts) == items
        assert parser.buffered == 0


# --------------------------------------------------------------------------- hypothesis


@st.composite
def packets(draw: st.DrawFn) -> Packet:
    ptype = draw(st.sampled_from(list(PacketType)))
    arity = ARG_COUNT[ptype]
    no_nul = st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"."))
    args = [draw(no_nul) for _ in range(max(arity - 1, 0))]
    if arity:
        args.append(draw(st.binary(max_size=200)))
    return Packet(draw(st.booleans()), ptype, tuple(args))


admin_lines = st.binary(min_size=1, max_size=60).map(
    lambda b: AdminLine(b"s" + b.replace(b"\n", b" ").replace(b"\r", b" ").replace(b"\0", b" "))
)


@FAST
@given(packets())
def test_hypothesis_packet_round_trip(packet: Packet) -> None:
    assert Parser().feed(packet.to_bytes()) == [packet]


@FAST
@given(st.lists(st.one_of(packets(), admin_lines), max_size=15),
       st.lists(st.integers(min_value=0, max_value=4000), max_size=30))
def test_hypothesis_stream_round_trip_any_chunking(items: list[Item], cuts: list[int]) -> None:
    wire = b"".join(i.to_bytes() for i in items)
    assert Parser().feed(wire) == items
    parser = Parser()
    assert feed_cut(parser, wire, cuts) == items
    assert parser.buffered == 0


@FAST
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0, max_value=600), max_size=20),
       packets())
def test_hypothesis_junk_never_raises_and_resync_finds_next_packet(
    junk: bytes, cuts: list[int], packet: Packet
) -> None:
    parser = Parser(max_line=64)
    items = feed_cut(parser, junk, cuts)
    assert all(isinstance(i, Packet | AdminLine | DecodeError) for i in items)
    parser.resync()
    assert parser.buffered == 0
    assert parser.feed(packet.to_bytes()) == [packet]


@FAST
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0, max_value=600), max_size=20),
       packets())
def test_hypothesis_hunting_through_junk_reports_only_errors_then_the_packet(
    junk: bytes, cuts: list[int], packet: Packet
) -> None:
    junk = junk.replace(b"\0RE", b"\0rE")  # a real header inside the junk would be found
    parser = Parser()
    parser.resync()
    items = feed_cut(parser, junk, cuts)
    assert all(isinstance(i, DecodeError) for i in items)
    assert parser.hunting
    tail = parser.feed(packet.to_bytes())
    assert tail[-1] == packet
    assert all(isinstance(i, DecodeError) for i in tail[:-1])
    # every junk byte is accounted for, none of the packet's
    assert skipped(items) + skipped(tail) == len(junk)
    assert not parser.hunting and parser.buffered == 0


@FAST
@given(st.lists(st.one_of(packets().map(Packet.to_bytes), st.binary(max_size=40),
                          st.sampled_from([b"\0REQ", b"\0RES\0\0\0", b"\0R", b"status\n"])),
                max_size=12),
       st.lists(st.integers(min_value=0, max_value=3000), max_size=25), st.booleans())
def test_hypothesis_junk_stream_decodes_the_same_however_it_is_chunked(
    pieces: list[bytes], cuts: list[int], hunting: bool
) -> None:
    wire = b"".join(pieces)
    whole, chunked = Parser(max_packet=200), Parser(max_packet=200)
    if hunting:
        whole.resync()
        chunked.resync()
    a = whole.feed(wire)
    b = feed_cut(chunked, wire, cuts)
    assert not_errors(a) == not_errors(b)


# ------------------------------------------------------------------------------ limits


def test_packet_over_size_limit_is_an_error_and_the_parser_recovers() -> None:
    big = req(T.SUBMIT_JOB, b"f", b"u", b"x" * 98)  # body of 102 bytes
    small = req(T.SUBMIT_JOB, b"f", b"u", b"x" * 96)  # body of exactly 100 bytes
    after = res(T.JOB_CREATED, b"H:lap:3")
    wire = big.to_bytes() + small.to_bytes() + after.to_bytes()
    for items in (Parser(max_packet=100).feed(wire),
                  feed_bytewise(Parser(max_packet=100), wire)):
        assert isinstance(items[0], DecodeError)
        assert "over limit" in items[0].message
        assert not_errors(items) == [small, after]
        assert skipped(items) == len(big.to_bytes())


def test_huge_declared_size_does_not_wait_for_the_body() -> None:
    header = b"\0REQ\x00\x00\x00\x07\xff\xff\xff\xff"
    parser = Parser()
    items = parser.feed(header)
    assert len(items) == 1 and isinstance(items[0], DecodeError)
    assert parser.feed(res(T.NOOP).to_bytes())[-1] == res(T.NOOP)


def test_admin_line_over_limit_is_an_error_and_the_parser_recovers() -> None:
    parser = Parser(max_line=50)
    items = feed_bytewise(parser, b"x" * 80)
    assert items and all(isinstance(i, DecodeError) for i in items)
    assert parser.feed(res(T.NOOP).to_bytes())[-1] == res(T.NOOP)


def test_admin_line_over_limit_does_not_swallow_the_next_packet_in_the_same_chunk() -> None:
    wire = b"x" * 200 + req(T.ECHO_REQ, b"hi").to_bytes()
    assert not_errors(feed_bytewise(Parser(max_line=100), wire)) == [req(T.ECHO_REQ, b"hi")]
    assert not_errors(Parser(max_line=100).feed(wire)) == [req(T.ECHO_REQ, b"hi")]


# ---------------------------------------------------------------------- bad packets


@pytest.mark.parametrize(("ptype", "body"), [
    (T.SUBMIT_JOB, b"reverse\0only-two"),
    (T.SUBMIT_JOB, b"no-nul-at-all"),
    (T.JOB_ASSIGN_UNIQ, b"H:lap:1\0f\0u"),
    (T.STATUS_RES, b"H:lap:1\x001\x000\x001"),
    (T.NOOP, b"x"),
    (T.GRAB_JOB_UNIQ, b"\0"),
], ids=lambda v: v.name if isinstance(v, PacketType) else None)
def test_wrong_argument_count_is_an_error(ptype: PacketType, body: bytes) -> None:
    bad = b"\0REQ" + int(ptype).to_bytes(4, "big") + len(body).to_bytes(4, "big") + body
    good = req(T.ECHO_REQ, b"after")
    items = Parser().feed(bad + good.to_bytes())
    assert len(items) == 2
    assert isinstance(items[0], DecodeError)
    assert "wrong argument count" in items[0].message
    assert items[0].skipped == len(bad)
    assert items[1] == good
    assert feed_bytewise(Parser(), bad + good.to_bytes()) == items


@pytest.mark.parametrize("ptype", [0, 5, 43, 1000, 0x7FFFFFFF])
def test_unknown_type_is_an_error_and_resyncs_to_the_next_good_header(ptype: int) -> None:
    body = b"something\0unknown"
    bad = b"\0RES" + ptype.to_bytes(4, "big") + len(body).to_bytes(4, "big") + body
    good = res(T.JOB_CREATED, b"H:lap:9")
    for items in (Parser().feed(bad + good.to_bytes()),
                  feed_bytewise(Parser(), bad + good.to_bytes())):
        assert items[-1] == good
        assert items[:-1] and all(isinstance(i, DecodeError) for i in items[:-1])
        assert skipped(items) == len(bad)


def test_bad_magic_is_an_error_and_resyncs() -> None:
    bad = b"\0REX\x00\x00\x00\x08\x00\x00\x00\x01z"
    good = res(T.NO_JOB)
    items = Parser().feed(bad + good.to_bytes())
    assert items[-1] == good
    assert isinstance(items[0], DecodeError) and "invalid packet header" in items[0].message
    assert skipped(items) == len(bad)


def test_resync_discards_the_partial_packet() -> None:
    parser = Parser()
    wire = req(T.SUBMIT_JOB_BG, b"f", b"u", b"payload").to_bytes()
    assert parser.feed(wire[:9]) == []
    parser.resync()
    assert parser.hunting and parser.buffered == 0
    tail = wire[9:] + req(T.GRAB_JOB).to_bytes()
    items = parser.feed(tail)
    assert items[-1] == req(T.GRAB_JOB)
    assert skipped(items) == len(wire) - 9


def test_resync_finds_a_header_split_across_feeds() -> None:
    parser = Parser()
    parser.resync()
    wire = res(T.JOB_CREATED, b"H:lap:5").to_bytes()
    items = parser.feed(b"garbage" + wire[:2])
    items += parser.feed(wire[2:6])
    items += parser.feed(wire[6:])
    assert not_errors(items) == [res(T.JOB_CREATED, b"H:lap:5")]
    assert skipped(items) == len(b"garbage")
