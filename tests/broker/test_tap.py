"""TapSink, the glue a byte source calls: bytes per connection and direction in, decoded
packets to the tracker, decode errors and gaps counted, never raised."""

from __future__ import annotations

from broker.protocol import req, res
from broker.tap import TapSink, make_tap
from broker.tracker import Event

from .wire import FN, H1, H2, H3, T, key


def test_tap_sink_counts_garbage_and_keeps_decoding_after_a_gap() -> None:
    events: list[Event] = []
    sink = make_tap(events.append, boot="7")
    assert isinstance(sink, TapSink)
    k = key(5001)
    sink.on_open(k, 1.0)
    a = req(T.SUBMIT_JOB_BG, FN, b"a", b"pa").to_bytes()
    b = req(T.SUBMIT_JOB_BG, FN, b"b", b"pb").to_bytes()
    c = req(T.SUBMIT_JOB_BG, FN, b"c", b"pc").to_bytes()
    garbage = b"\0\xff\xfe not gearman \x01\x02\x03"
    sink.on_data(k, True, a + garbage + b, 2.0)
    assert sink.counters["decode_errors"] >= 1
    sink.on_data(k, False, res(T.JOB_CREATED, H1.encode()).to_bytes()
                 + res(T.JOB_CREATED, H2.encode()).to_bytes(), 3.0)
    assert [(e.kind, e.handle, e.unique) for e in events] == [
        ("submitted", H1, "a"), ("submitted", H2, "b")]

    errors = sink.counters["decode_errors"]
    half = req(T.SUBMIT_JOB_BG, FN, b"lost", b"x" * 40).to_bytes()
    sink.on_data(k, True, half[:20], 4.0)  # the rest of this packet is lost
    sink.on_gap(k, True, 5.0, len(half) - 30)
    sink.on_data(k, True, half[-10:] + c, 6.0)  # resumes mid-packet
    sink.on_data(k, False, res(T.JOB_CREATED, H3.encode()).to_bytes(), 7.0)
    assert sink.counters["gaps"] == 1
    assert sink.counters["decode_errors"] > errors
    assert [(e.kind, e.handle, e.unique) for e in events][-1] == ("submitted", H3, "c")
    assert sink.counters["bytes"] == sum(
        len(x) for x in (a + garbage + b, half[:20], half[-10:] + c)) + 3 * len(
        res(T.JOB_CREATED, H1.encode()).to_bytes())


def test_tap_sink_joins_a_connection_mid_stream() -> None:
    events: list[Event] = []
    sink = make_tap(events.append)
    k = key(5002)
    sink.on_open(k, 1.0, mid_stream=True)
    packet = res(T.JOB_ASSIGN_UNIQ, H1.encode(), FN, b"u", b"data").to_bytes()
    sink.on_data(k, False, packet[5:] + packet, 2.0)  # starts inside an earlier packet
    assert [(e.kind, e.handle) for e in events] == [("started", H1)]
    assert sink.counters["decode_errors"] >= 1

    other = key(5003)  # never announced: treated as joined mid-stream
    sink.on_data(other, False, b"tail of something" + packet, 3.0)
    assert [(e.kind, e.conn) for e in events][-1] == ("started", other.peer)


def test_tap_sink_byte_at_a_time_and_close() -> None:
    events: list[Event] = []
    sink = make_tap(events.append, boot="9", payload_max=3)
    client, worker = key(5001), key(5002)
    sink.on_open(client, 0.0)
    sink.on_open(worker, 0.0)
    stream = [
        (client, True, req(T.SUBMIT_JOB, FN, b"", b"payload").to_bytes()),
        (client, False, res(T.JOB_CREATED, H1.encode()).to_bytes()),
        (worker, True, req(T.GRAB_JOB_UNIQ).to_bytes()),
        (worker, False, res(T.JOB_ASSIGN_UNIQ, H1.encode(), FN, b"", b"payload").to_bytes()),
    ]
    for n, (conn, from_peer, data) in enumerate(stream):
        for i in range(len(data)):
            sink.on_data(conn, from_peer, data[i : i + 1], float(n))
    sink.on_close(client, 10.0)
    assert [(e.kind, e.boot, e.data, e.size, e.detail) for e in events] == [
        ("submitted", "9", b"pay", 7, ""),
        ("started", "9", b"pay", 7, ""),
        ("abandoned", "9", None, 0, "running"),
    ]
    assert sink.counters["decode_errors"] == 0


def test_tap_sink_applies_a_requested_boot_at_once_without_traffic() -> None:
    """The boot watcher's thread applies a restart itself (under the sink's lock), so an
    idle source still marks the old boot's jobs lost."""
    events: list[Event] = []
    sink = make_tap(events.append, boot="100")
    k = key(5001)
    sink.on_open(k, 1.0)
    sink.on_data(k, True, req(T.SUBMIT_JOB_BG, FN, b"", b"").to_bytes(), 2.0)
    sink.on_data(k, False, res(T.JOB_CREATED, H1.encode()).to_bytes(), 3.0)
    sink.request_boot("200")
    assert [(e.kind, e.boot) for e in events] == [("submitted", "100"), ("lost", "100")]
    assert sink.tracker.boot == "200"
