"""The live stream's fan-out (``monitoring/fanout.py``): one Redis subscription per web
process, each message narrowed and encoded once per distinct subscription, a bounded queue
per client.

The first tests drive a :class:`~monitoring.fanout.Hub` in this process (its delivery needs
no Redis). The others run the real stack: a private ``redis-server`` that the test starts,
stops and starts again (the shared Redis is never stopped), ``python -m hq.serve ws`` (the
websocket server of ``make run``) with two workers on it, the real publisher thread of this
process, and many websocket clients.
No wall-clock asserts: only counts, and generous deadlines for what must happen.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from monitoring import fanout, live
from tests.support.stack import ROOT, database_url, free_port, stop_process, wait_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
WORKERS = 2
CLIENTS = 200
WAIT = 60.0  # seconds for what must come (a busy machine, two workers, many clients)


def job(seq: int, functions: list[str], **extra: Any) -> dict[str, Any]:
    """A coalesced job message about ``functions`` (two jobs each)."""
    return {"type": "job", "server": "fan", "at": 1.0, "seq": seq,
            "changed": 2 * len(functions), "truncated": False,
            "functions": {f: {"changed": 2, "states": {"completed": 2}} for f in functions},
            "jobs": [{"id": i, "handle": f"H:fan:{seq}-{f}-{i}", "function": f,
                      "state": "completed", "server": "fan"}
                     for f in functions for i in range(2)], **extra}


# -- the hub in this process ---------------------------------------------------------------

@dataclass
class Collector:
    """A client whose socket takes what it is sent at once (or never, when ``stuck``)."""

    stuck: bool = False
    got: list[str] = field(default_factory=list)
    dropped: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, text: str) -> None:
        if self.stuck:
            await self.release.wait()  # a client that never reads
        self.got.append(text)

    def on_slow(self) -> None:
        self.dropped += 1


async def settle() -> None:
    for _ in range(100):  # let every pump write what is queued
        await asyncio.sleep(0)


def test_each_distinct_subscription_is_encoded_once_and_shared() -> None:
    async def scenario() -> None:
        hub = fanout.Hub("redis://127.0.0.1:9/0", "unused")  # deliver() needs no Redis
        subs = {"all": live.Subscription.of(), "resize": live.Subscription.of("resize_*"),
                "mail": live.Subscription.of("mail"), "pdf": live.Subscription.of("pdf")}
        clients: dict[str, list[Collector]] = {name: [Collector() for _ in range(5)]
                                               for name in subs}
        pumps = []
        for name, group in clients.items():
            for c in group:
                outlet = fanout.Outlet(c.send, c.on_slow)
                hub.join(outlet)
                hub.move(outlet, subs[name])
                pumps.append(asyncio.create_task(outlet.pump()))
        assert hub.clients == 20

        published = live.encode(job(1, ["resize_small", "resize_big", "mail"]))
        before = fanout.stats()
        hub.deliver(published)
        await settle()
        after = fanout.stats()
        for p in pumps:
            p.cancel()

        assert after["encoded"] - before["encoded"] == 2  # resize_*, mail; pdf: nothing
        assert after["queued"] - before["queued"] == 15
        assert all(c.got == [published.decode()] for c in clients["all"])
        assert all(c.got == [] for c in clients["pdf"])
        for name, functions in (("resize", ["resize_small", "resize_big"]), ("mail", ["mail"])):
            texts = [c.got[0] for c in clients[name]]
            assert all(len(c.got) == 1 for c in clients[name])
            assert all(t is texts[0] for t in texts)  # the very same string, encoded once
            message = json.loads(texts[0])
            assert list(message["functions"]) == functions
            assert {j["function"] for j in message["jobs"]} == set(functions)
            assert message["changed"] == 2 * len(functions)

    asyncio.run(scenario())


def test_a_stuck_client_is_dropped_and_delays_no_one() -> None:
    async def scenario() -> tuple[Collector, list[Collector], fanout.Hub]:
        hub = fanout.Hub("redis://127.0.0.1:9/0", "unused")
        stuck, fast = Collector(stuck=True), [Collector() for _ in range(3)]
        pumps = []
        for c in (stuck, *fast):
            outlet = fanout.Outlet(c.send, c.on_slow, limit=8)
            hub.join(outlet)
            pumps.append(asyncio.create_task(outlet.pump()))
        before = fanout.stats()["slow_dropped"]
        for seq in range(30):
            hub.deliver(live.encode(job(seq, ["f"])))
            await settle()
        assert fanout.stats()["slow_dropped"] - before == 1
        for p in pumps:
            p.cancel()
        return stuck, fast, hub

    stuck, fast, hub = asyncio.run(scenario())
    assert stuck.dropped == 1 and stuck.got == []
    assert hub.clients == 3  # the stuck one left the hub
    for c in fast:
        assert [json.loads(t)["seq"] for t in c.got] == list(range(30))


def test_a_malformed_message_is_skipped_not_fatal() -> None:
    async def scenario() -> list[str]:
        hub = fanout.Hub("redis://127.0.0.1:9/0", "unused")
        c = Collector()
        outlet = fanout.Outlet(c.send, c.on_slow)
        hub.join(outlet)
        hub.move(outlet, live.Subscription.of("f"))
        pump = asyncio.create_task(outlet.pump())
        for data in (b"not json", b"[1, 2]", b"\xff\xfe", live.encode({"type": "job", "jobs": 5}),
                     live.encode(job(7, ["f"]))):
            hub._deliver_safely(data)
        await settle()
        pump.cancel()
        return c.got

    got = asyncio.run(scenario())
    assert [json.loads(t)["seq"] for t in got] == [7]


# -- the real stack ---------------------------------------------------------------------------

class PrivateRedis:
    """A redis-server of this test's own, on a free port, without persistence."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@dataclass
class Web:
    port: int
    token: str
    proc: subprocess.Popen[bytes]
    log: Path

    def workers(self) -> set[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return {int(p) for p in children.read_text().split()}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    r = PrivateRedis(tmp_path)
    r.start()
    yield r
    r.stop()


@pytest.fixture
def web(redis_server: PrivateRedis, tmp_path: Path, transactional_db: None,
        settings: Any) -> Iterator[Web]:
    from hq.models import Role
    from hq.services import ensure_user, issue_token

    settings.REDIS_URL = redis_server.url  # this process's publisher publishes there too
    token = issue_token(ensure_user("fanout-viewer", Role.VIEWER))
    port, log = free_port(), tmp_path / "hq-serve.log"
    env = {**os.environ, "DATABASE_URL": database_url(), "REDIS_URL": redis_server.url,
           "PYTHONPATH": str(ROOT), "HQ_SECRET_KEY": "test-only-secret-key-for-hq-serve-0123456789",
           "HQ_WEB_WORKERS": str(WORKERS), "HQ_DB_POOL_MAX": "2", "HQ_DB_POOL_MIN": "1",
           "HQ_WS_WORKERS": str(WORKERS), "HQ_WS_DB_POOL_MAX": "2",
           "HQ_WEB_DB_CONNECTIONS": str(WORKERS * 4), "HQ_LOG_LEVEL": "WARNING"}
    with log.open("wb") as out:  # gunicorn's master leads, its children are the workers
        proc = subprocess.Popen([sys.executable, "-m", "hq.serve", "ws", "--ws-bind",
                                 f"127.0.0.1:{port}"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(port, timeout=90)
        yield Web(port, token, proc, log)
    finally:
        live.drain()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@dataclass
class Client:
    ws: ClientConnection
    wanted: str | None  # the function glob it subscribed to
    got: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None

    async def read(self) -> None:
        try:
            async for raw in self.ws:
                self.got.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        self.close_code = self.ws.close_code

    def seen(self, key: str, value: object) -> bool:
        return any(m.get(key) == value for m in self.got)


async def connect(web: Web, wanted: str | None = None) -> Client:
    ws = await websockets.connect(f"ws://127.0.0.1:{web.port}/ws/live/?token={web.token}",
                                  open_timeout=WAIT, max_size=2**24)
    client = Client(ws, wanted)
    if wanted is not None:
        await ws.send(json.dumps({"subscribe": {"function": wanted}}))
        ack = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        assert ack == {"type": "subscribed", "function": wanted, "handle": None}
    return client


async def until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


def marker(name: str) -> dict[str, Any]:
    """Reaches every client ("anything on this server may have changed"); as each client
    gets messages in order, once it has the marker it has everything published before."""
    return {"type": "queue", "server": "fan", "at": 1.0, "functions": None, "marker": name}


def publish_phase(first: int, count: int) -> None:
    """Even seqs are about fn_0 and fn_1, odd ones about fn_0 only."""
    for seq in range(first, first + count):
        live.publish(job(seq, ["fn_0", "fn_1"] if seq % 2 == 0 else ["fn_0"]))


def check_phase(clients: list[Client], seqs: range) -> None:
    for c in clients:
        counts = Counter(m["seq"] for m in c.got if m.get("type") == "job" and m["seq"] in seqs)
        if c.wanted == "fn_1":
            assert counts == {s: 1 for s in seqs if s % 2 == 0}, counts
            for m in c.got:
                if m.get("type") == "job":
                    assert list(m["functions"]) == ["fn_1"]
                    assert {j["function"] for j in m["jobs"]} == {"fn_1"}
        else:
            assert counts == dict.fromkeys(seqs, 1), counts


async def probe_until_all_hear(clients: list[Client], what: str) -> None:
    """Publish probes until every client has heard one (the workers' subscriptions are up)."""
    for n in range(int(WAIT * 2)):
        name = f"{what}-{n}"
        live.publish(marker(name))
        with contextlib.suppress(AssertionError):
            await until(lambda name=name: all(c.seen("marker", name) for c in clients),  # type: ignore[misc]
                        what, 0.5)
            return
    raise AssertionError(f"not every client heard a probe: {what}")


def test_many_clients_each_message_once_across_a_redis_restart(
        web: Web, redis_server: PrivateRedis) -> None:
    async def scenario() -> None:
        clients: list[Client] = []
        for i in range(CLIENTS):  # a third subscribe to fn_1, a third to fn_*, a third to all
            clients.append(await connect(web, ("fn_1", "fn_*", None)[i % 3]))
        readers = [asyncio.create_task(c.read()) for c in clients]
        await probe_until_all_hear(clients, "start")
        workers = web.workers()
        assert len(workers) == WORKERS

        publish_phase(0, 10)
        live.publish(marker("A"))
        await until(lambda: all(c.seen("marker", "A") for c in clients), "marker A")
        check_phase(clients, range(10))

        redis_server.stop()
        live.publish(marker("while-down"))  # never raises; lost
        late = await websockets.connect(
            f"ws://127.0.0.1:{web.port}/ws/live/?token={web.token}", open_timeout=WAIT)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(late.recv(), WAIT)
        assert late.close_code == 1013  # the stream is unavailable: try again later
        redis_server.start()

        await probe_until_all_hear(clients, "restarted")
        publish_phase(10, 10)
        live.publish(marker("B"))
        await until(lambda: all(c.seen("marker", "B") for c in clients), "marker B")
        check_phase(clients, range(10, 20))

        assert web.workers() == workers  # no worker died or was replaced
        assert all(c.close_code is None for c in clients)  # every websocket stayed open
        for c in clients:
            await c.ws.close()
        await asyncio.gather(*readers)

    asyncio.run(scenario())
    assert "Traceback" not in web.log.read_text()


def test_a_client_that_does_not_read_is_dropped_and_the_others_get_everything(
        web: Web) -> None:
    # 12.8 MB to the stuck client: past its socket buffers (the server's send buffer
    # grows to a few MB on loopback) and its 64-message queue. Messages go uncompressed
    # (no per-message deflate), so the readers are few and the messages not huge.
    big = "x" * 64_000
    count = 200

    async def scenario() -> tuple[int, int | None]:
        clients = [await connect(web, (None, "fn_*")[i % 2]) for i in range(6)]
        readers = [asyncio.create_task(c.read()) for c in clients]
        stuck = await asyncio.to_thread(stuck_client, web)
        await probe_until_all_hear(clients, "start")
        for seq in range(count):
            live.publish({"type": "alert", "at": 1.0, "rule": "big", "function": "",
                          "server": "fan", "state": "firing", "seq": seq, "pad": big})
        live.publish(marker("end"))
        await until(lambda: all(c.seen("marker", "end") for c in clients), "marker end")
        for c in clients:
            seqs = [m["seq"] for m in c.got if m.get("type") == "alert"]
            assert seqs == list(range(count))
            assert c.close_code is None
            await c.ws.close()
        await asyncio.gather(*readers)
        return await asyncio.to_thread(read_until_closed, stuck)

    alerts, close_code = asyncio.run(scenario())
    assert alerts < count  # it was dropped before it had everything
    assert close_code in (None, 4429)  # the close frame, if it got through at all


def stuck_client(web: Web) -> socket.socket:
    """A websocket handshake on a socket with a tiny receive buffer that is then not read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(WAIT)
    sock.connect(("127.0.0.1", web.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws/live/?token={web.token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_until_closed(sock: socket.socket) -> tuple[int, int | None]:
    """Read the stuck client's socket to its end: (alert messages, close code if one came)."""
    buf, alerts, close_code = b"", 0, None
    with sock:
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            buf += chunk
            while True:
                frame = _frame(buf)
                if frame is None:
                    break
                opcode, payload, buf = frame
                if opcode == 0x1 and json.loads(payload).get("type") == "alert":
                    alerts += 1
                elif opcode == 0x8 and len(payload) >= 2:
                    close_code = struct.unpack("!H", payload[:2])[0]
    return alerts, close_code


def _frame(buf: bytes) -> tuple[int, bytes, bytes] | None:
    """One unmasked server frame off the front of ``buf``: (opcode, payload, rest)."""
    if len(buf) < 2:
        return None
    opcode, n, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, at = struct.unpack("!H", buf[2:4])[0], 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, at = struct.unpack("!Q", buf[2:10])[0], 10
    if len(buf) < at + n:
        return None
    return opcode, buf[at:at + n], buf[at + n:]
