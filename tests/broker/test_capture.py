"""Capture mode end to end: a real tcpdump on lo feeding the reassembler."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from broker.capture import CaptureSource
from broker.stream import ConnKey
from broker.tcpdump import CaptureError

from .replay import RecordingSink, payload_of


def echo_server() -> tuple[socket.socket, threading.Thread]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(65536):
                conn.sendall(chunk)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def test_real_tcpdump_on_loopback() -> None:
    server, echo = echo_server()
    port = server.getsockname()[1]
    sink = RecordingSink()
    source = CaptureSource("lo", port, sink, stats_interval=0.2)
    runner = threading.Thread(target=source.run, daemon=True)
    runner.start()
    try:
        assert source.ready.wait(10), "tcpdump did not start listening"
        messages = [b"\0REQ\0\0\0\x07\0\0\0\x05hello", payload_of(300_000, 9), b"bye"]
        with socket.create_connection(("127.0.0.1", port)) as client:
            for message in messages:
                client.sendall(message)
                received = b""
                while len(received) < len(message):
                    received += client.recv(65536)
                assert received == message
        echo.join(5)
        assert sink.closed.wait(10), f"no close seen: {source.stats()}"
        # tcpdump's counters arrive while it runs (SIGUSR1), not only when it exits
        deadline = time.monotonic() + 5
        while source.captured < source.reassembler.segments and time.monotonic() < deadline:
            time.sleep(0.05)
        assert source.captured == source.reassembler.segments
    finally:
        source.stop()
        runner.join(10)
        server.close()
    assert not runner.is_alive()
    conns = {e[1] for e in sink.events if e[0] == "open"}
    assert len(conns) == 1
    (conn,) = conns
    assert isinstance(conn, ConnKey) and conn.server_port == port
    sent = b"".join(messages)
    assert sink.stream(True, conn) == sent
    assert sink.stream(False, conn) == sent
    assert sink.kinds() == ["open", "data", "close"]
    stats = source.stats()
    assert stats["gaps"] == 0 and stats["kernel_drops"] == 0
    assert stats["received_by_filter"] >= stats["segments"] > 0
    assert stats["decode_malformed"] == 0 and stats["flows_open"] == 0


def test_capture_error_for_a_missing_interface() -> None:
    source = CaptureSource("no-such-if0", 4730, RecordingSink())
    with pytest.raises(CaptureError, match="no-such-if0"):
        source.run()
    assert source.ready.is_set()
