"""Proxy mode against a real gearmand and real Gearman clients (the ``gearman`` CLI).

Each test starts its own gearmand on a free port and a Proxy (uvloop when importable) on
another, in a background thread with its own loop. Nothing here asserts wall-clock speed;
``bench/proxy_echo.py`` measures that.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.proxy import HIGH_WATER
from broker.shippers import ShipMode
from broker.stream import ConnKey

from .harness import (
    CAN_DO,
    ECHO_REQ,
    ECHO_RES,
    GEARADMIN,
    HOST,
    SET_CLIENT_ID,
    Gearmand,
    ProxyThread,
    RaisingSink,
    RecordingSink,
    accepts,
    admin,
    closed_by_other_end,
    free_port,
    read_packet,
    req,
    run_client,
    start_worker,
    status_workers,
    wait_until,
)

pytestmark = pytest.mark.gearmand  # `make deps` installs it: missing is a failure


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def gearmand(tmp_path: Path) -> Iterator[Gearmand]:
    g = Gearmand(free_port(), tmp_path).start()
    yield g
    g.stop()


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture(params=["inline", "thread"])
def ship(request: pytest.FixtureRequest) -> ShipMode:
    mode: ShipMode = request.param
    return mode


@pytest.fixture
def proxy(gearmand: Gearmand, sink: RecordingSink, ship: ShipMode) -> Iterator[ProxyThread]:
    p = ProxyThread(gearmand.port, sink, ship=ship)
    yield p
    p.stop()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; all are killed at teardown."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


# ---------------------------------------------------------------------------- tests


def test_gearman_cli_through_proxy_matches_direct(
    gearmand: Gearmand, proxy: ProxyThread, sink: RecordingSink,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    start_worker(procs, proxy.port, "reverse", "rev")
    assert wait_until(lambda: status_workers(gearmand.port, "reverse") == 1)

    via_proxy = run_client(proxy.port, "reverse", "hello")
    direct = run_client(gearmand.port, "reverse", "hello")

    assert via_proxy == direct
    assert b"olleh" in via_proxy
    peer_bytes = b"".join(c[3] for c in sink.calls if c[0] == "data" and c[2])
    assert b"reverse" in peer_bytes and b"hello" in peer_bytes


def test_admin_text_commands_same_as_direct(
    gearmand: Gearmand, proxy: ProxyThread, procs: list[subprocess.Popen[bytes]],
) -> None:
    start_worker(procs, gearmand.port, "upper", "tr", "a-z", "A-Z")
    assert wait_until(lambda: status_workers(gearmand.port, "upper") == 1)

    for command in ("version", "status", "getpid", "maxqueue upper"):
        assert admin(proxy.port, command) == admin(gearmand.port, command), command
    assert "upper\t0\t0\t1" in admin(proxy.port, "status")

    def gearadmin(port: int) -> bytes:
        return subprocess.run([GEARADMIN, "-h", HOST, "-p", str(port), "--status"],
                              capture_output=True, timeout=10, check=True).stdout

    assert gearadmin(proxy.port) == gearadmin(gearmand.port)


def test_sink_sees_exactly_the_bytes_each_side_sent(
    gearmand: Gearmand, proxy: ProxyThread, sink: RecordingSink,
) -> None:
    sent, received = bytearray(), bytearray()
    with socket.create_connection((HOST, proxy.port), timeout=5) as s:
        local = s.getsockname()
        for i in range(50):
            packet = req(ECHO_REQ, f"ping {i} ".encode() * (i + 1))
            s.sendall(packet)
            sent += packet
            answer = read_packet(s)
            assert answer == b"\0RES" + packet[4:8].replace(b"\x10", b"\x11") + packet[8:]
            received += answer
        pipelined = b"".join(req(ECHO_REQ, bytes([i]) * 300) for i in range(100))
        s.sendall(pipelined + b"version\n")
        sent += pipelined + b"version\n"
        for _ in range(100):
            received += read_packet(s)
        while not received.endswith(b"\n"):
            received += s.recv(4096)

    conn = ConnKey(local[0], local[1], HOST, gearmand.port)
    assert wait_until(lambda: conn in sink.closed)
    assert sink.conns() == [conn]
    assert sink.stream(conn, from_peer=True) == bytes(sent)
    assert sink.stream(conn, from_peer=False) == bytes(received)
    assert sink.calls[0] == ("open", conn) and sink.calls[-1] == ("close", conn)
    stats = proxy.stats()
    assert stats["bytes_from_peer"] == len(sent)
    assert stats["bytes_to_peer"] == len(received)
    assert stats["connections"] == 1 and stats["sink_errors"] == 0


def test_raising_sink_never_breaks_forwarding(gearmand: Gearmand, ship: ShipMode) -> None:
    p = ProxyThread(gearmand.port, RaisingSink(), ship=ship)
    try:
        for _ in range(3):
            with socket.create_connection((HOST, p.port), timeout=5) as s:
                s.sendall(req(ECHO_REQ, b"still here"))
                assert read_packet(s) == b"\0RES" + struct.pack(">II", ECHO_RES, 10) + b"still here"
        assert wait_until(lambda: p.stats()["sink_errors"] >= 3 * 4)
    finally:
        p.stop()


def test_upstream_down_closes_downstream_then_recovers(tmp_path: Path) -> None:
    port = free_port()
    p = ProxyThread(port, RecordingSink())
    g = Gearmand(port, tmp_path)
    try:
        with socket.create_connection((HOST, p.port), timeout=5) as s:
            s.sendall(req(ECHO_REQ, b"anyone?"))
            assert closed_by_other_end(s)
        assert p.stats()["upstream_connect_failures"] == 1
        assert p.stats()["active"] == 0

        g.start()
        with socket.create_connection((HOST, p.port), timeout=5) as s:
            s.sendall(req(ECHO_REQ, b"back"))
            assert read_packet(s).endswith(b"back")
    finally:
        p.stop()
        g.stop()


def test_peer_close_closes_upstream(gearmand: Gearmand, proxy: ProxyThread) -> None:
    s = socket.create_connection((HOST, proxy.port), timeout=5)
    s.sendall(req(SET_CLIENT_ID, b"hq-proxy-test-worker") + req(CAN_DO, b"proxied"))
    assert wait_until(lambda: "hq-proxy-test-worker" in admin(gearmand.port, "workers"))
    s.close()
    assert wait_until(lambda: "hq-proxy-test-worker" not in admin(gearmand.port, "workers"))
    assert wait_until(lambda: proxy.stats()["active"] == 0)


def test_gearmand_close_closes_peer(gearmand: Gearmand, proxy: ProxyThread) -> None:
    with socket.create_connection((HOST, proxy.port), timeout=5) as s:
        s.sendall(req(ECHO_REQ, b"x"))
        read_packet(s)
        gearmand.stop()
        assert closed_by_other_end(s)
    assert wait_until(lambda: proxy.stats()["active"] == 0)


def test_one_mib_job_round_trips_byte_exact(
    gearmand: Gearmand, proxy: ProxyThread, sink: RecordingSink,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    # rev, not cat: the CLI worker writes the whole job to the command's stdin before
    # reading its stdout, so cat deadlocks on the pipe buffer with a big job.
    start_worker(procs, proxy.port, "rev1m", "rev")
    assert wait_until(lambda: status_workers(gearmand.port, "rev1m") == 1)
    payload = os.urandom(512 * 1024).hex().encode()  # 1 MiB, one line

    via_proxy = run_client(proxy.port, "rev1m", stdin=payload)
    assert via_proxy.rstrip(b"\n") == payload[::-1]
    assert run_client(gearmand.port, "rev1m", stdin=payload) == via_proxy
    stats = proxy.stats()
    assert stats["bytes_from_peer"] > 2 * len(payload)  # client's job + worker's result
    assert stats["bytes_to_peer"] > 2 * len(payload)


def test_slow_reader_pauses_instead_of_buffering() -> None:
    """An upstream that never reads: the proxy must stop reading the sender."""
    listener = socket.create_server((HOST, 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    p = ProxyThread(listener.getsockname()[1], RecordingSink())
    try:
        with socket.create_connection((HOST, p.port), timeout=5) as s:
            s.setblocking(False)
            chunk, pushed = b"\0" * 65536, 0
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    pushed += s.send(chunk)
                except BlockingIOError:
                    time.sleep(0.05)
            assert pushed > HIGH_WATER  # some went through before back-pressure
            buffered = p.on_loop(lambda: max(
                pair.up.transport.get_write_buffer_size()
                for pair in p.proxy.pairs if pair.up.transport is not None))
            assert buffered <= HIGH_WATER + 4 * 65536 + 262144
            assert p.stats()["read_pauses"] >= 1
    finally:
        p.stop()
        listener.close()
        for a in accepted:
            a.close()


def test_thread_mode_drops_copies_not_traffic(gearmand: Gearmand) -> None:
    """A stuck sink fills the queue: forwarding goes on and the sink later gets a gap."""
    release = threading.Event()

    class StuckSink(RecordingSink):
        def on_open(self, conn: ConnKey, ts: float, *, mid_stream: bool = False) -> None:
            release.wait(10)
            super().on_open(conn, ts)

    sink = StuckSink()
    p = ProxyThread(gearmand.port, sink, ship="thread", queue_max=5)
    try:
        with socket.create_connection((HOST, p.port), timeout=5) as s:
            for i in range(50):
                s.sendall(req(ECHO_REQ, b"%d" % i))
                assert read_packet(s).endswith(b"%d" % i)
            local = s.getsockname()
            conn = ConnKey(local[0], local[1], HOST, gearmand.port)
        assert p.stats()["dropped_chunks"] > 0
        release.set()
        assert wait_until(lambda: conn in sink.closed)
        kinds = [c[0] for c in sink.calls]
        assert kinds[0] == "open" and kinds[-1] == "close" and "gap" in kinds
    finally:
        release.set()
        p.stop()


def test_half_close_is_passed_on() -> None:
    """The peer shuts down its write side: the upstream sees EOF and can still answer."""
    listener = socket.create_server((HOST, 0))

    def echo_after_eof() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            conn.sendall(data[::-1])

    threading.Thread(target=echo_after_eof, daemon=True).start()
    p = ProxyThread(listener.getsockname()[1], RecordingSink())
    try:
        with socket.create_connection((HOST, p.port), timeout=5) as s:
            s.sendall(b"status\n" * 1000)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        assert got == (b"status\n" * 1000)[::-1]
        assert wait_until(lambda: p.stats()["active"] == 0)
    finally:
        p.stop()
        listener.close()


def _run_two_workers(listen_port: int, upstream_port: int) -> None:
    from broker.launcher import run_proxy

    run_proxy((HOST, listen_port), (HOST, upstream_port), RecordingSink, workers=2)


def test_run_proxy_with_two_processes(gearmand: Gearmand) -> None:
    """SO_REUSEPORT processes share the port; SIGTERM stops them all."""
    import multiprocessing

    port = free_port()
    parent = multiprocessing.get_context("fork").Process(
        target=_run_two_workers, args=(port, gearmand.port))
    parent.start()
    try:
        assert wait_until(lambda: accepts(port))
        for i in range(20):
            with socket.create_connection((HOST, port), timeout=5) as s:
                s.sendall(req(ECHO_REQ, b"n%d" % i))
                assert read_packet(s).endswith(b"n%d" % i)
        assert parent.pid is not None
        children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
        assert len(children) == 2
        parent.terminate()
        parent.join(10)
        assert parent.exitcode == 0
        assert wait_until(lambda: not any(Path(f"/proc/{c}").exists() for c in children))
        assert not accepts(port)
    finally:
        if parent.is_alive():
            parent.kill()
            parent.join()


def test_answer_after_gearmand_closed_is_not_copied(gearmand: Gearmand, ship: ShipMode) -> None:
    """A worker holds a job when gearmand stops (a restart) and answers afterwards: the
    proxy still passes the bytes on (gearmand resets them), but the tracker hears that the
    connection ended when gearmand closed it and never sees the answer, so the job is not
    recorded completed (found by bench/faults.py)."""
    from broker.protocol import PacketType as T
    from broker.tap import make_tap
    from broker.tracker import Event

    events: list[Event] = []
    p = ProxyThread(gearmand.port, make_tap(events.append, boot="1"), ship=ship)
    try:
        with socket.create_connection((HOST, p.port), timeout=5) as worker, \
                socket.create_connection((HOST, p.port), timeout=5) as client:
            worker.sendall(req(CAN_DO, b"fault"))
            client.sendall(req(T.SUBMIT_JOB_BG, b"fault", b"u-1", b"payload"))
            handle = read_packet(client)[12:]
            worker.sendall(req(T.GRAB_JOB_UNIQ))
            assigned = read_packet(worker)
            assert struct.unpack(">I", assigned[4:8])[0] == T.JOB_ASSIGN_UNIQ
            assert wait_until(lambda: [e.kind for e in events] == ["submitted", "started"])
            gearmand.stop()
            assert closed_by_other_end(worker)
            worker.sendall(req(T.WORK_COMPLETE, handle, b"too late"))
        # the pairs end once the proxy forwarded the answer (gearmand resets it)
        assert wait_until(lambda: p.stats()["active"] == 0)
        assert wait_until(lambda: "worker_lost" in [e.kind for e in events])
        assert [(e.kind, e.handle) for e in events] == [
            ("submitted", handle.decode()), ("started", handle.decode()),
            ("worker_lost", handle.decode())]
    finally:
        p.stop()
