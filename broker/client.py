"""A small asyncio Gearman client and worker on top of the codec.

Used by HQ's own job actions, the demo workload and tests. It speaks just what those need:
submit (any priority, background or not), wait for the result, and a worker loop with
status, data, fail and exception replies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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
