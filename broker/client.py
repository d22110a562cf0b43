"""Gearman clients on top of the codec.

* :class:`SubmitConnection` and :func:`submit_first` — blocking, with a timeout on
  everything — are what HQ's own job actions use (``jobs/services.py``): one submit to
  the first of several gearmand servers that acknowledges it, then, for a foreground job,
  waiting for its result for a bounded time. Connections used only for background
  submits go back to a small per-process pool (:data:`POOL`) when closed, so the
  scheduler and bulk retries do not connect once per job; a pooled connection gearmand
  closed meanwhile is dropped and a fresh one made. :func:`cancel_job` sends gearmand's admin
  ``cancel job H``. :func:`parse_servers` reads ``HQ_GEARMAN``.
* :class:`Client` and :class:`Worker` — a small asyncio client and worker loop — are used
  by the demo workload, the benches and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from .admin import AdminClient, AdminError, parse_address
from .protocol import DecodeError, Packet, PacketType, Parser, req

T = PacketType

SUBMIT = {
    ("normal", False): T.SUBMIT_JOB, ("normal", True): T.SUBMIT_JOB_BG,
    ("high", False): T.SUBMIT_JOB_HIGH, ("high", True): T.SUBMIT_JOB_HIGH_BG,
    ("low", False): T.SUBMIT_JOB_LOW, ("low", True): T.SUBMIT_JOB_LOW_BG,
}


class GearmanError(Exception):
    pass


class JobFailed(GearmanError):
    pass


class NotAcknowledged(GearmanError):
    """No gearmand acknowledged a submit (each one's reason in ``reasons``)."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons) or "no gearmand server is configured")
        self.reasons = reasons


# -- HQ's own submits: blocking, bounded ------------------------------------------------------

#: seconds to connect to a gearmand, and to wait for its answer to a submit
CONNECT_TIMEOUT_S = 2.0
REPLY_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """One gearmand HQ may submit to: the name its tap records it under, and where."""

    name: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def parse_servers(text: str, default_name: str) -> list[ServerAddress]:
    """``HQ_GEARMAN``: ``gm1=10.0.0.5:4730,gm2=10.0.0.6:4730``, or a bare ``host:port``.

    A bare entry is named ``default_name`` when it is the only one (the tap's default
    ``--server`` name), else by its address. Raises ValueError on an unusable entry."""
    entries = [e.strip() for e in text.split(",") if e.strip()]
    out: list[ServerAddress] = []
    for entry in entries:
        name, sep, addr = entry.partition("=")
        if not sep:
            name, addr = "", entry
        try:
            host, port = parse_address(addr)
        except ValueError:
            raise ValueError(f"HQ_GEARMAN: {entry!r} is not NAME=HOST:PORT or HOST:PORT") from None
        if not host or not 0 < port < 65536:
            raise ValueError(f"HQ_GEARMAN: {entry!r} has no usable host and port")
        name = name.strip() or (default_name if len(entries) == 1 else f"{host}:{port}")
        out.append(ServerAddress(name, host, port))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"HQ_GEARMAN: a server name appears twice: {names}")
    return out


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a foreground job ended: completed with ``result``, or failed with ``error``."""

    completed: bool
    result: bytes = b""
    error: str = ""


class SubmitConnection:
    """One blocking connection to one gearmand for HQ's submits. Every read has a
    deadline; any socket or protocol problem is a :class:`GearmanError`."""

    def __init__(self, server: ServerAddress, *, connect_timeout: float = CONNECT_TIMEOUT_S,
                 reply_timeout: float = REPLY_TIMEOUT_S) -> None:
        self.server = server
        self.reply_timeout = reply_timeout
        self._parser = Parser()
        self._inbox: list[Packet] = []
        #: the pool :meth:`close` gives it back to; None once it is unfit for reuse (a
        #: foreground submit, whose job would live as long as the connection, or a failure)
        self.pool: SubmitPool | None = None
        try:
            self._sock = socket.create_connection((server.host, server.port),
                                                  timeout=connect_timeout)
        except (OSError, OverflowError, ValueError, UnicodeError) as exc:
            raise GearmanError(f"{server.name} ({server.address}): cannot connect: "
                               f"{exc}") from exc

    def close(self) -> None:
        """Give the connection back to its pool, or close it when it has none."""
        pool, self.pool = self.pool, None
        if pool is not None and not self._inbox:
            pool.put(self)
        else:
            self.discard()

    def discard(self) -> None:
        """Close the socket for good."""
        self.pool = None
        with contextlib.suppress(OSError):
            self._sock.close()

    def alive(self) -> bool:
        """False when gearmand closed the connection or sent something unasked for while
        it sat idle (checked without waiting)."""
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def __enter__(self) -> SubmitConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self, what: str) -> GearmanError:
        self.pool = None
        return GearmanError(f"{self.server.name} ({self.server.address}): {what}")

    def _recv(self, deadline: float) -> Packet | None:
        """The next packet, or None when ``deadline`` (monotonic) passed first."""
        while not self._inbox:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._sock.settimeout(left)
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as exc:
                raise self._fail(f"connection failed: {exc}") from exc
            if not data:
                raise self._fail("gearmand closed the connection")
            for item in self._parser.feed(data):
                if isinstance(item, DecodeError):
                    raise self._fail(f"bad reply: {item.message}")
                if isinstance(item, Packet):
                    self._inbox.append(item)
        return self._inbox.pop(0)

    def submit(self, function: str, payload: bytes, *, unique: str = "",
               priority: str = "normal", background: bool = True) -> str:
        """Submit one job; gearmand's handle once it acknowledged it (JOB_CREATED)."""
        if not background:
            self.pool = None
        packet = req(SUBMIT[(priority, background)], function.encode(), unique.encode(),
                     payload)
        try:
            self._sock.sendall(packet.to_bytes())
        except OSError as exc:
            raise self._fail(f"cannot send: {exc}") from exc
        deadline = time.monotonic() + self.reply_timeout
        while True:
            reply = self._recv(deadline)
            if reply is None:
                raise self._fail(f"no answer within {self.reply_timeout:g} s")
            if reply.type == T.ERROR:
                text = b": ".join(reply.args).decode("utf-8", "replace")
                raise self._fail(f"refused the job: {text}")
            if reply.type == T.JOB_CREATED:
                return reply.args[0].decode("utf-8", "replace")

    def wait(self, handle: str, timeout: float) -> Outcome | None:
        """How the foreground job ``handle`` ended, or None when ``timeout`` ran out first
        (the job goes on; gearmand keeps running it when this connection closes)."""
        deadline = time.monotonic() + max(timeout, 0.0)
        want = handle.encode()
        while True:
            pkt = self._recv(deadline)
            if pkt is None:
                return None
            if not pkt.args or pkt.args[0] != want:
                continue
            if pkt.type == T.WORK_COMPLETE:
                return Outcome(True, pkt.args[1] if len(pkt.args) > 1 else b"")
            if pkt.type in (T.WORK_FAIL, T.WORK_EXCEPTION):
                text = pkt.args[1].decode("utf-8", "replace") if len(pkt.args) > 1 else ""
                return Outcome(False, error=text or "the worker reported failure")


class SubmitPool:
    """Idle submit connections, at most ``per_server`` for each gearmand, for this
    process (a forked child starts with an empty pool: sockets are not shared across a
    fork). Thread-safe."""

    def __init__(self, per_server: int = 4) -> None:
        self.per_server = per_server
        self._idle: dict[ServerAddress, list[SubmitConnection]] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _forked(self) -> None:
        if self._pid != os.getpid():  # the parent's sockets are not ours to use
            self._idle, self._pid = {}, os.getpid()

    def get(self, server: ServerAddress, *, connect_timeout: float = CONNECT_TIMEOUT_S,
            reply_timeout: float = REPLY_TIMEOUT_S) -> tuple[SubmitConnection, bool]:
        """An idle live connection to ``server`` (True: reused), else a new one."""
        while True:
            with self._lock:
                self._forked()
                idle = self._idle.get(server)
                conn = idle.pop() if idle else None
            if conn is None:
                break
            if conn.alive():
                conn.reply_timeout, conn.pool = reply_timeout, self
                return conn, True
            conn.discard()
        conn = SubmitConnection(server, connect_timeout=connect_timeout,
                                reply_timeout=reply_timeout)
        conn.pool = self
        return conn, False

    def put(self, conn: SubmitConnection) -> None:
        with self._lock:
            self._forked()
            idle = self._idle.setdefault(conn.server, [])
            if len(idle) < self.per_server:
                idle.append(conn)
                return
        conn.discard()

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.discard()


#: HQ's submits (:func:`submit_first`) reuse these connections
POOL = SubmitPool()


def submit_first(servers: Sequence[ServerAddress], function: str, payload: bytes, *,
                 unique: str = "", priority: str = "normal", background: bool = True,
                 start: int = 0, connect_timeout: float = CONNECT_TIMEOUT_S,
                 reply_timeout: float = REPLY_TIMEOUT_S, pool: SubmitPool | None = POOL,
                 ) -> tuple[SubmitConnection, str]:
    """Submit to the first server (trying them in order from ``start``) that acknowledges
    the job: its open connection (the caller closes it: a background submit's goes back to
    ``pool``) and the handle. A reused connection that fails before gearmand answered
    (gearmand restarted since, say) is dropped and one fresh connection to the same server
    tried; any other failure moves on to the next server. Raises :class:`NotAcknowledged`
    with each server's reason when none did."""
    reasons: list[str] = []
    n = len(servers)
    for i in range(n):
        server = servers[(start + i) % n]
        for _attempt in range(2):
            try:
                if pool is None:
                    conn = SubmitConnection(server, connect_timeout=connect_timeout,
                                            reply_timeout=reply_timeout)
                    reused = False
                else:
                    conn, reused = pool.get(server, connect_timeout=connect_timeout,
                                            reply_timeout=reply_timeout)
            except GearmanError as exc:
                reasons.append(str(exc))
                break
            try:
                return conn, conn.submit(function, payload, unique=unique, priority=priority,
                                         background=background)
            except GearmanError as exc:
                conn.discard()
                if reused and _never_answered(exc):
                    continue  # a stale pooled connection: try a fresh one
                reasons.append(str(exc))
                break
    raise NotAcknowledged(reasons)


def _never_answered(exc: GearmanError) -> bool:
    text = str(exc)
    return "closed the connection" in text or "cannot send" in text or (
        "connection failed" in text)


def cancel_job(server: ServerAddress, handle: str, *, timeout: float = REPLY_TIMEOUT_S) -> None:
    """gearmand's admin ``cancel job H``. gearmand answers OK for any job it holds: a queued
    one is then skipped when a worker asks (it stays in ``show jobs``, marked ignored,
    until then); a job a worker already runs is *not* stopped. Raises GearmanError when
    gearmand does not hold the job (``ERR UNKNOWN_JOB``) or cannot be reached."""
    try:
        with AdminClient(server.host, server.port, timeout=timeout) as admin:
            reply = admin.command(f"cancel job {handle}")
    except AdminError as exc:
        raise GearmanError(f"{server.name} ({server.address}): {exc}") from exc
    if not reply or not reply[0].startswith("OK"):
        raise GearmanError(f"{server.name} ({server.address}): unexpected reply {reply!r}")


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = Parser()
        self.inbox: list[Packet] = []

    @classmethod
    async def open(cls, host: str, port: int, timeout: float = 5.0) -> _Conn:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, TimeoutError) as exc:
            raise GearmanError(f"cannot connect to gearmand at {host}:{port}: {exc}") from exc
        return cls(r, w)

    async def send(self, packet: Packet) -> None:
        self.writer.write(packet.to_bytes())
        await self.writer.drain()

    async def recv(self) -> Packet:
        while not self.inbox:
            data = await self.reader.read(65536)
            if not data:
                raise GearmanError("gearmand closed the connection")
            for item in self.parser.feed(data):
                if isinstance(item, DecodeError):
                    raise GearmanError(f"bad reply from gearmand: {item.message}")
                if isinstance(item, Packet):
                    self.inbox.append(item)
        return self.inbox.pop(0)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@dataclass(frozen=True, slots=True)
class Submitted:
    handle: str
    result: bytes | None = None


class Client:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._conn: _Conn | None = None

    async def _c(self) -> _Conn:
        if self._conn is None:
            self._conn = await _Conn.open(self.host, self.port)
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def submit(self, function: str, payload: bytes, *, unique: str = "",
                     priority: str = "normal", background: bool = True,
                     epoch: int | None = None) -> Submitted:
        """Submit a job; for a foreground job, wait for its result (JobFailed on failure)."""
        conn = await self._c()
        if epoch is not None:
            packet = req(T.SUBMIT_JOB_EPOCH, function.encode(), unique.encode(),
                         str(epoch).encode(), payload)
        else:
            packet = req(SUBMIT[(priority, background)], function.encode(), unique.encode(),
                         payload)
        await conn.send(packet)
        reply = await conn.recv()
        if reply.type == T.ERROR:
            raise GearmanError(f"gearmand refused the job: {reply.args[1].decode()}")
        handle = reply.args[0].decode()
        if background or epoch is not None:
            return Submitted(handle)
        while True:
            pkt = await conn.recv()
            if pkt.args[0].decode() != handle:
                continue
            if pkt.type == T.WORK_COMPLETE:
                return Submitted(handle, pkt.args[1])
            if pkt.type in (T.WORK_FAIL, T.WORK_EXCEPTION):
                raise JobFailed(pkt.args[1].decode() if len(pkt.args) > 1 else "failed")


class Job:
    """What a worker function gets: the payload and ways to report progress."""

    def __init__(self, conn: _Conn, handle: bytes, function: str, payload: bytes) -> None:
        self._conn, self.handle, self.function, self.payload = conn, handle, function, payload

    async def status(self, numerator: int, denominator: int) -> None:
        await self._conn.send(req(T.WORK_STATUS, self.handle, str(numerator).encode(),
                                  str(denominator).encode()))

    async def warning(self, data: bytes) -> None:
        await self._conn.send(req(T.WORK_WARNING, self.handle, data))


class WorkFailed(Exception):
    """Raise from a worker function to send WORK_FAIL."""


Handler = Callable[[Job], Awaitable[bytes]]


class Worker:
    """Runs handlers for functions until :meth:`stop`. Exceptions → WORK_EXCEPTION."""

    def __init__(self, host: str, port: int, client_id: str = "") -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.handlers: dict[str, Handler] = {}
        self._conn: _Conn | None = None
        self._stopping = False

    def register(self, function: str, handler: Handler) -> None:
        self.handlers[function] = handler

    async def stop(self) -> None:
        self._stopping = True
        if self._conn is not None:
            await self._conn.close()

    async def run(self) -> None:
        conn = self._conn = await _Conn.open(self.host, self.port)
        await conn.send(req(T.OPTION_REQ, b"exceptions"))
        if self.client_id:
            await conn.send(req(T.SET_CLIENT_ID, self.client_id.encode()))
        for name in self.handlers:
            await conn.send(req(T.CAN_DO, name.encode()))
        try:
            while not self._stopping:
                await conn.send(req(T.GRAB_JOB_UNIQ))
                pkt = await conn.recv()
                while pkt.type == T.OPTION_RES or pkt.type == T.ERROR:
                    pkt = await conn.recv()
                if pkt.type == T.NO_JOB:
                    await conn.send(req(T.PRE_SLEEP))
                    while (await conn.recv()).type != T.NOOP:
                        pass
                    continue
                if pkt.type == T.JOB_ASSIGN_UNIQ:
                    await self._work(conn, pkt.args[0], pkt.args[1].decode(), pkt.args[3])
        except GearmanError:
            if not self._stopping:
                raise

    async def _work(self, conn: _Conn, handle: bytes, function: str, payload: bytes) -> None:
        job = Job(conn, handle, function, payload)
        try:
            result = await self.handlers[function](job)
        except WorkFailed:
            await conn.send(req(T.WORK_FAIL, handle))
        except Exception as exc:  # a handler's error is the job's exception, not ours
            await conn.send(req(T.WORK_EXCEPTION, handle, str(exc).encode()))
        else:
            await conn.send(req(T.WORK_COMPLETE, handle, result))
