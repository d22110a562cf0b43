"""TCP reassembly: order, retransmits, gaps, mid-stream joins, bounds, and chunking."""

from __future__ import annotations

import random

import pytest

from broker.reassembly import seq_delta

from . import pcapgen
from .replay import PEER, Replay, handshake, payload_of, run, segments

# -- reassembly ----------------------------------------------------------------------------


def test_in_order_conversation_with_close() -> None:
    conv = pcapgen.Conversation()
    request, reply = payload_of(5000, 1), payload_of(3000, 2)
    frames = [
        *handshake(conv),
        *segments(conv, True, request, [1448, 2896]),
        *segments(conv, False, reply, [1000]),
        conv.fin(True, len(request)),
        conv.fin(False, len(reply)),
    ]
    replay = run(frames)
    sink = replay.sink
    assert sink.stream(True) == request and sink.stream(False) == reply
    assert sink.kinds() == ["open", "data", "close"]
    assert sink.events[0][3] is False  # not mid-stream
    stats = replay.reassembler.stats()
    assert stats["flows_open"] == 0 and stats["gaps"] == 0 and stats["retransmits"] == 0
    assert stats["segments"] == len(frames) and stats["bytes"] == 8000


def test_out_of_order_segments_wait_for_the_hole() -> None:
    conv = pcapgen.Conversation()
    data = payload_of(4000)
    a, b, c, d = segments(conv, True, data, [1000, 2000, 3000])
    replay = run([*handshake(conv), a, c, d, b])
    assert replay.sink.stream(True) == data
    assert replay.reassembler.out_of_order == 2
    # c and d only after b: the bytes come out in stream order, never early
    sizes = [len(e[3]) for e in replay.sink.events if e[0] == "data"]  # type: ignore[arg-type]
    assert sizes == [1000, 1000, 1000, 1000]


def test_retransmits_and_overlaps_are_delivered_once() -> None:
    conv = pcapgen.Conversation()
    data = payload_of(60)
    frames = [
        *handshake(conv),
        conv.data(True, 0, data[0:10]),
        conv.data(True, 0, data[0:10]),  # plain retransmit
        conv.data(True, 5, data[5:20]),  # overlaps the head
        conv.data(True, 40, data[40:50]),  # out of order...
        conv.data(True, 30, data[30:45]),  # ...overlapping the buffered one
        conv.data(True, 40, data[40:50]),  # buffered twice
        conv.data(True, 15, data[15:32]),  # fills the hole, overlaps both sides
        conv.data(True, 0, data[0:60]),  # a repacketised retransmit of everything
    ]
    replay = run(frames)
    assert replay.sink.stream(True) == data
    assert replay.reassembler.gaps == 0
    assert replay.reassembler.retransmits >= 5


def test_gap_never_filled_is_reported_after_the_timeout() -> None:
    conv = pcapgen.Conversation()
    data = payload_of(400)
    writer = pcapgen.PcapWriter(step=0.1)
    frames = [
        *handshake(conv),
        conv.data(True, 0, data[:100]),
        # data[100:150] was dropped by the kernel
        conv.data(True, 150, data[150:200]),
        conv.data(True, 200, data[200:250]),
        conv.data(False, 0, b"server bytes flow on meanwhile"),
    ]
    replay = run(frames, writer=writer, gap_timeout=1.0)
    assert replay.sink.stream(True) == data[:100]  # held back: the hole may still fill
    replay.feed(pcapgen.record(writer.ts + 2.0, conv.data(True, 250, data[250:400])))
    sink = replay.sink
    assert sink.gaps() == [(True, 50)]
    assert sink.stream(True) == data[:100] + data[150:400]
    peer_events = [e[0] for e in sink.events if e[0] in ("data", "gap") and e[2] is True]
    assert peer_events == ["data", "gap", "data", "data", "data"]
    assert replay.reassembler.lost_bytes == 50


def test_gap_times_out_on_tick_without_more_segments() -> None:
    conv = pcapgen.Conversation()
    data = payload_of(300)
    replay = run(
        [*handshake(conv), conv.data(True, 0, data[:100]), conv.data(True, 200, data[200:])]
    )
    assert replay.sink.gaps() == []
    replay.reassembler.tick(pcapgen.PcapWriter().ts + 10)
    assert replay.sink.gaps() == [(True, 100)]
    assert replay.sink.stream(True) == data[:100] + data[200:]


def test_gap_when_the_buffer_limit_is_reached() -> None:
    conv = pcapgen.Conversation()
    data = payload_of(10_000)
    frames = [*handshake(conv), *segments(conv, True, data[:1000], [500])]
    frames += segments(conv, True, data, list(range(1000, 10_000, 1000)))[2:]  # 2000 on
    replay = run(frames, max_buffer=4000)
    assert replay.sink.gaps() == [(True, 1000)]
    assert replay.sink.stream(True) == data[:1000] + data[2000:]


def test_gap_when_too_many_segments_wait() -> None:
    conv = pcapgen.Conversation()
    data = payload_of(100)
    frames = [*handshake(conv), conv.data(True, 0, data[:10])]
    frames += [conv.data(True, i, data[i : i + 10]) for i in range(20, 100, 10)]
    replay = run(frames, max_ooo_segments=3)
    assert replay.sink.gaps() == [(True, 10)]
    assert replay.sink.stream(True) == data[:10] + data[20:]


def test_flow_joined_mid_stream() -> None:
    conv = pcapgen.Conversation(peer_isn=123_456_789, server_isn=987_654_321)
    frames = [
        conv.data(False, 5000, b"JOB_ASSIGN tail"),  # the server speaks first this time
        conv.data(True, 7000, b"\0REQ...request"),
        conv.data(True, 6990, b"0123456789"),  # before our first byte: dropped, not data
        conv.data(True, 7014, b" more"),
        conv.fin(True, 7019),
        conv.fin(False, 5015),
    ]
    sink = run(frames).sink
    assert sink.events[0] == ("open", PEER, pytest.approx(sink.events[0][2]), True)
    assert sink.stream(True) == b"\0REQ...request more"
    assert sink.stream(False) == b"JOB_ASSIGN tail"
    assert sink.kinds() == ["open", "data", "close"]


def test_pure_ack_or_lone_fin_of_unknown_flow_opens_nothing() -> None:
    conv = pcapgen.Conversation()
    replay = run([conv.data(True, 0, b""), conv.fin(False, 9), conv.rst(True, 3)])
    assert replay.sink.events == []
    assert replay.reassembler.flows_open == 0


def test_syn_ack_without_syn_starts_both_streams() -> None:
    conv = pcapgen.Conversation()
    frames = [conv.syn_ack(), conv.data(True, 5, b"later"), conv.data(True, 0, b"first")]
    sink = run(frames).sink
    assert sink.events[0][3] is False
    assert sink.stream(True) == b"firstlater"


def test_megabyte_in_shuffled_segments() -> None:
    rng = random.Random(7)
    conv = pcapgen.Conversation()
    data = payload_of(1 << 20, seed=3)
    cuts = sorted(rng.sample(range(1, len(data)), 900))
    body = segments(conv, True, data, cuts)
    body += rng.sample(body, 50)  # some retransmits too
    rng.shuffle(body)
    replay = run(
        [*handshake(conv), *body, conv.fin(True, len(data)), conv.fin(False, 0)],
        writer=pcapgen.PcapWriter(step=1e-5),
    )
    assert replay.sink.stream(True) == data
    assert replay.sink.gaps() == []
    assert replay.sink.kinds() == ["open", "data", "close"]


@pytest.mark.parametrize("isn", [2**32 - 1, 2**32 - 2, 2**32 - 700, 0xFFFFFF00])
def test_sequence_number_wrap(isn: int) -> None:
    conv = pcapgen.Conversation(peer_isn=isn, server_isn=isn - 5)
    data = payload_of(3000)
    parts = segments(conv, True, data, [100, 600, 1000, 1500, 2400])
    parts[1], parts[3] = parts[3], parts[1]
    reply = segments(conv, False, data, [250, 700])
    replay = run(
        [*handshake(conv), *parts, *reversed(reply), conv.fin(True, 3000), conv.fin(False, 3000)]
    )
    assert replay.sink.stream(True) == data
    assert replay.sink.stream(False) == data
    assert replay.sink.gaps() == [] and replay.sink.kinds()[-1] == "close"


def test_seq_delta_is_signed_and_wraps() -> None:
    assert seq_delta(5, 2**32 - 5) == 10
    assert seq_delta(2**32 - 5, 5) == -10
    assert seq_delta(7, 7) == 0


def test_fin_waits_for_the_bytes_before_it() -> None:
    conv = pcapgen.Conversation()
    data = payload_of(300)
    a, b, c = segments(conv, True, data, [100, 200])
    frames = [*handshake(conv), a, c, conv.fin(False, 0), conv.fin(True, 300), b]
    sink = run(frames).sink
    assert sink.stream(True) == data
    assert sink.kinds() == ["open", "data", "close"]


def test_fin_behind_a_lost_segment_closes_after_the_gap() -> None:
    conv = pcapgen.Conversation()
    data = payload_of(300)
    a, _lost, c = segments(conv, True, data, [100, 200])
    replay = run([*handshake(conv), a, conv.fin(True, 300), conv.fin(False, 0)])
    assert replay.sink.kinds() == ["open", "data"]
    replay.reassembler.tick(pcapgen.PcapWriter().ts + 5)
    assert replay.sink.gaps() == [(True, 200)]
    assert replay.sink.kinds() == ["open", "data", "gap", "close"]
    del c


def test_rst_flushes_buffered_data_then_closes() -> None:
    conv = pcapgen.Conversation()
    data = payload_of(300)
    a, _lost, c = segments(conv, True, data, [100, 200])
    sink = run([*handshake(conv), a, c, conv.rst(False, 0)]).sink
    assert sink.kinds() == ["open", "data", "gap", "data", "close"]
    assert sink.stream(True) == data[:100] + data[200:]


def test_data_and_fin_in_one_segment() -> None:
    conv = pcapgen.Conversation()
    frames = [
        *handshake(conv),
        conv.data(True, 0, b"bye", flags=pcapgen.FIN | pcapgen.ACK),
        conv.data(False, 0, b"ok", flags=pcapgen.FIN | pcapgen.ACK),
    ]
    sink = run(frames).sink
    assert (sink.stream(True), sink.stream(False)) == (b"bye", b"ok")
    assert sink.kinds() == ["open", "data", "close"]


def test_new_syn_on_the_same_ports_replaces_the_old_flow() -> None:
    old = pcapgen.Conversation()
    new = pcapgen.Conversation(peer_isn=77_000_000, server_isn=99)
    frames = [
        *handshake(old),
        old.data(True, 0, b"old"),
        *handshake(new),
        new.data(True, 0, b"new"),
        old.data(True, 3, b"stale"),
    ]
    sink = run(frames).sink
    assert sink.kinds() == ["open", "data", "close", "open", "data"]
    assert [e[3] for e in sink.events if e[0] == "data"] == [b"old", b"new"]


def test_idle_flows_expire_and_memory_stays_bounded() -> None:
    writer = pcapgen.PcapWriter(step=10.0)
    frames = []
    for port in range(40000, 40010):
        conv = pcapgen.Conversation(peer_port=port)
        frames += [*handshake(conv), conv.data(True, 0, b"hi")]
    replay = run(frames, writer=writer, idle_timeout=55.0)
    # each flow lived ~30 s of capture time; the last few remain
    assert replay.reassembler.flows_open < 4
    assert replay.reassembler.flows_expired >= 7
    closes = [e for e in replay.sink.events if e[0] == "close"]
    assert len(closes) == replay.reassembler.flows_expired


def test_max_flows_evicts_the_quietest() -> None:
    frames = []
    for port in range(40000, 40100):
        frames.append(pcapgen.Conversation(peer_port=port).data(True, 0, b"x"))
    replay = run(frames, max_flows=32)
    assert replay.reassembler.flows_open <= 32
    assert replay.reassembler.flows_total == 100
    closes = sum(1 for e in replay.sink.events if e[0] == "close")
    assert closes == 100 - replay.reassembler.flows_open


def test_other_ports_are_ignored() -> None:
    conv = pcapgen.Conversation(server_port=5432)
    replay = run([conv.syn(), conv.data(True, 0, b"x")])
    assert replay.sink.events == [] and replay.reassembler.foreign == 2


def test_truncated_frame_becomes_a_gap() -> None:
    conv = pcapgen.Conversation()
    data = payload_of(300)
    writer = pcapgen.PcapWriter()
    writer.extend([*handshake(conv), conv.data(True, 0, data[:100])])
    cut = conv.data(True, 100, data[100:200])
    writer.records.append(pcapgen.record(writer.ts + 0.001, cut[:80], wire_len=len(cut)))
    writer.ts += 0.002
    writer.extend([conv.data(True, 200, data[200:])])
    replay = Replay().feed(writer.to_bytes())
    replay.reassembler.close_all(writer.ts + 1)
    assert replay.decoder is not None and replay.decoder.truncated == 1
    assert replay.sink.gaps() == [(True, 100)]
    assert replay.sink.stream(True) == data[:100] + data[200:]


@pytest.mark.parametrize("seed", range(30))
def test_every_byte_is_delivered_or_reported_lost(seed: int) -> None:
    """Burst drops, local reordering and every give-up bound: delivered + lost = sent."""
    rng = random.Random(seed)
    conv = pcapgen.Conversation()
    data = payload_of(50_000, seed)
    body = segments(conv, True, data, sorted(rng.sample(range(1, 50_000), 500)))
    reply = segments(conv, False, data, sorted(rng.sample(range(1, 50_000), 300)))
    frames = []
    while body or reply:
        side = body if body and (not reply or rng.random() < 0.6) else reply
        frames.append(side.pop(0))
    kept, i = [], 0
    while i < len(frames):
        if rng.random() < 0.03:
            i += rng.randint(1, 40)  # the kernel dropped a burst
            continue
        kept.append(frames[i])
        i += 1
    for _ in range(20):
        j = rng.randrange(len(kept) - 1)
        kept[j], kept[j + 1] = kept[j + 1], kept[j]
    writer = pcapgen.PcapWriter(step=rng.choice([1e-5, 0.01, 0.1]))
    writer.extend([*handshake(conv), *kept, conv.fin(True, 50_000), conv.fin(False, 50_000)])
    bounds = rng.choice([{}, {"max_ooo_segments": 5}, {"max_buffer": 3000}])
    replay = Replay(**bounds).feed(writer.to_bytes())
    replay.reassembler.close_all(writer.ts + 100)
    sink = replay.sink
    for from_peer in (True, False):
        position = 0  # walk the reference stream: data must match it, a gap skips it
        for event in sink.events:
            if event[0] == "data" and event[2] is from_peer:
                chunk = event[3]
                assert isinstance(chunk, bytes)
                assert chunk == data[position : position + len(chunk)]
                position += len(chunk)
            elif event[0] == "gap" and event[2] is from_peer:
                lost = event[4]
                assert isinstance(lost, int) and lost > 0
                position += lost
        assert position == len(data)
    assert sink.kinds()[0] == "open" and sink.kinds()[-1] == "close"


# -- chunking ------------------------------------------------------------------------------


def busy_capture() -> bytes:
    """Two interleaved connections with reordering, a retransmit, a gap and a close."""
    rng = random.Random(11)
    one = pcapgen.Conversation()
    two = pcapgen.Conversation(peer="2001:db8::9", server="2001:db8::1", peer_port=50000)
    frames: list[bytes] = []
    for conv in (one, two):
        data = payload_of(20_000, seed=conv.peer_port)
        body = segments(conv, True, data, sorted(rng.sample(range(1, 20_000), 30)))
        body[3], body[5] = body[5], body[3]
        del body[20]
        reply = segments(conv, False, data[:5000], [700, 2500])
        frames += [
            *handshake(conv),
            *body,
            body[9],
            *reply,
            conv.fin(True, 20_000),
            conv.fin(False, 5000),
        ]
    writer = pcapgen.PcapWriter(step=0.01)
    writer.extend(frames)
    writer.add(pcapgen.Conversation(peer_port=60000).syn(), ts=writer.ts + 5)  # time passes
    return writer.to_bytes()


def test_byte_at_a_time_and_random_chunks_give_the_same_events() -> None:
    data = busy_capture()
    whole = Replay().feed(data).sink.events
    assert [e[0] for e in whole if e[0] in ("gap", "close")] == ["gap", "close"] * 2
    by_byte = Replay().feed(data, [1] * len(data)).sink.events
    rng = random.Random(5)
    random_chunks = Replay().feed(data, [rng.randint(1, 3000) for _ in range(len(data))])
    assert by_byte == whole
    assert random_chunks.sink.events == whole


# -- found by bench/faults.py ----------------------------------------------------------------


def test_held_segments_are_delivered_with_their_own_capture_time() -> None:
    """Bytes held behind a hole keep the time they were captured, whether the hole is
    filled or given up: the tracker compares them with the other direction's."""
    conv = pcapgen.Conversation()
    data = payload_of(400)
    a, b, c, d = segments(conv, True, data, [100, 200, 300])
    writer = pcapgen.PcapWriter(step=0.1)
    replay = run([*handshake(conv), a, c], writer=writer)
    t_a, t_c = writer.ts - 0.1, writer.ts
    replay.feed(pcapgen.record(t_c + 0.5, b))  # fills the hole
    replay.feed(pcapgen.record(t_c + 0.6, conv.data(True, 400, b"after a lost d")))
    replay.reassembler.tick(t_c + 5)  # d never comes
    times = [e[4] for e in replay.sink.events if e[0] == "data"]
    assert times == [pytest.approx(t, abs=1e-6) for t in (t_a, t_c + 0.5, t_c, t_c + 0.6)]
    assert replay.sink.gaps() == [(True, 100)]
    del d


def test_peer_bytes_after_gearmand_closed_are_not_delivered() -> None:
    """gearmand's FIN first: the connection is over for the tracker at once, and what the
    peer sends after it (gearmand never reads it) is counted, not delivered."""
    conv = pcapgen.Conversation()
    frames = [
        *handshake(conv),
        conv.data(True, 0, b"request"),
        conv.data(False, 0, b"reply"),
        conv.fin(False, 5),
        conv.data(True, 7, b"late answer"),
        conv.fin(True, 18),
    ]
    replay = run(frames)
    sink = replay.sink
    assert sink.kinds() == ["open", "data", "close"]
    assert sink.stream(True) == b"request" and sink.stream(False) == b"reply"
    assert replay.reassembler.bytes_after_close == len(b"late answer")
    assert replay.reassembler.flows_open == 0
    # the same ports again, a new connection: seen like any other
    again = pcapgen.Conversation(peer_isn=77_000)
    later = [again.syn(), again.syn_ack(), again.data(True, 0, b"hello")]
    replay.feed(b"".join(pcapgen.record(1_700_000_010.0 + i, f) for i, f in enumerate(later)))
    assert sink.kinds()[-3:] == ["close", "open", "data"]
    assert sink.stream(True).endswith(b"hello")


def test_gearmand_closing_first_still_waits_for_the_peer_bytes_before_it() -> None:
    """Bytes the peer sent before gearmand's FIN and held behind a hole are delivered
    (gearmand read them); bytes beyond what the peer had sent by then are not."""
    conv = pcapgen.Conversation()
    data = payload_of(300)
    a, b, c = segments(conv, True, data, [100, 200])
    frames = [*handshake(conv), a, c, conv.fin(False, 0), conv.data(True, 300, b"late"), b]
    replay = run(frames)
    assert replay.sink.stream(True) == data
    assert replay.sink.kinds() == ["open", "data", "close"]
    assert replay.reassembler.bytes_after_close == 4
