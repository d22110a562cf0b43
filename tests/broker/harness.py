"""Test harness for proxy mode: a private gearmand, a Proxy on its own event loop, a sink
that records every call, and small socket-level and ``gearman`` CLI clients.

A helper module (like :mod:`pcapgen`), not a test module.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.proxy import Proxy
from broker.stream import ConnKey, StreamSink

GEARMAND = "/usr/sbin/gearmand"
GEARMAN = shutil.which("gearman") or "/usr/bin/gearman"
GEARADMIN = shutil.which("gearadmin") or "/usr/bin/gearadmin"
HOST = "127.0.0.1"
ECHO_REQ, ECHO_RES, CAN_DO, SET_CLIENT_ID = 16, 17, 1, 22


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def req(ptype: int, *args: bytes) -> bytes:
    data = b"\0".join(args)
    return b"\0REQ" + struct.pack(">II", ptype, len(data)) + data


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def closed_by_other_end(sock: socket.socket) -> bool:
    """True when the socket got EOF or a reset (either is a prompt close)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def read_packet(sock: socket.socket) -> bytes:
    head = recv_exact(sock, 12)
    size = struct.unpack(">I", head[8:])[0]
    return head + recv_exact(sock, size)


def admin(port: int, command: str) -> str:
    """Send one admin text command, read up to the terminating ``.`` line."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(command.encode() + b"\n")
        one_line = command.split()[0] in ("version", "getpid", "maxqueue", "cancel")
        buf = b""
        while not (buf.endswith(b"\n.\n") or buf == b".\n"):
            if one_line and buf.endswith(b"\n"):
                break  # these replies are one line, without the "." terminator
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf.decode()


class Gearmand:
    """A private gearmand process on a given port."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Gearmand:
        self.proc = subprocess.Popen(
            [GEARMAND, f"--listen={HOST}", f"--port={self.port}", "--log-file=none",
             f"--pid-file={self.workdir}/gearmand-{self.port}.pid", "--threads=1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        assert wait_until(lambda: accepts(self.port)), "gearmand did not start"
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class RecordingSink:
    """Keeps every call, in order; thread-safe so tests can read while the loop runs."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()
        self.closed: set[ConnKey] = set()

    def on_open(self, conn: ConnKey, ts: float, *, mid_stream: bool = False) -> None:
        with self.lock:
            self.calls.append(("open", conn))

    def on_data(self, conn: ConnKey, from_peer: bool, data: bytes, ts: float) -> None:
        with self.lock:
            self.calls.append(("data", conn, from_peer, data))

    def on_gap(self, conn: ConnKey, from_peer: bool, ts: float, lost: int) -> None:
        with self.lock:
            self.calls.append(("gap", conn, from_peer, lost))

    def on_close(self, conn: ConnKey, ts: float) -> None:
        with self.lock:
            self.calls.append(("close", conn))
            self.closed.add(conn)

    def stream(self, conn: ConnKey, from_peer: bool) -> bytes:
        with self.lock:
            return b"".join(c[3] for c in self.calls
                            if c[0] == "data" and c[1] == conn and c[2] == from_peer)

    def conns(self) -> list[ConnKey]:
        with self.lock:
            return [c[1] for c in self.calls if c[0] == "open"]


class RaisingSink(RecordingSink):
    """A sink broken in every method."""

    def on_open(self, conn: ConnKey, ts: float, *, mid_stream: bool = False) -> None:
        raise RuntimeError("sink open broke")

    def on_data(self, conn: ConnKey, from_peer: bool, data: bytes, ts: float) -> None:
        raise RuntimeError("sink data broke")

    def on_close(self, conn: ConnKey, ts: float) -> None:
        raise RuntimeError("sink close broke")


class ProxyThread:
    """Runs a Proxy on its own event loop in a daemon thread."""

    def __init__(self, upstream_port: int, sink: StreamSink, **kw: Any) -> None:
        try:
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover
            self.loop = asyncio.new_event_loop()
        self.proxy = Proxy((HOST, 0), (HOST, upstream_port), sink, **kw)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.proxy.start())
        self.port = self.proxy.port

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return self.call(run())

    def stats(self) -> dict[str, Any]:
        return dict(self.on_loop(self.proxy.stats))

    def stop(self) -> None:
        self.call(self.proxy.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def start_worker(procs: list[subprocess.Popen[bytes]], port: int, func: str,
                 *cmd: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([GEARMAN, "-h", HOST, "-p", str(port), "-w", "-f", func, "--", *cmd],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    return p


def run_client(port: int, func: str, *args: str, stdin: bytes | None = None) -> bytes:
    cmd = [GEARMAN, "-h", HOST, "-p", str(port), "-f", func, *args]
    done = subprocess.run(cmd, input=stdin, capture_output=True, timeout=30, check=True)
    return done.stdout


def status_workers(port: int, func: str) -> int:
    for line in admin(port, "status").splitlines():
        parts = line.split("\t")
        if parts[0] == func and len(parts) == 4:
            return int(parts[3])
    return 0
