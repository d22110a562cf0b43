"""Sans-IO codec for the Gearman protocol: binary packets and the text admin protocol.

Nothing here touches a socket. A :class:`Parser` is fed the bytes of one direction of one
connection and returns what it could decode; :meth:`Packet.to_bytes` turns a packet back
into bytes. Both kinds of traffic share gearmand's port: a binary packet starts with a NUL
byte (``\\0REQ`` / ``\\0RES``), anything else is a line of the text admin protocol.

Decode problems are returned as :class:`DecodeError` values, never raised, because the
caller is a forwarding or capture loop that must keep going whatever a peer sends.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from .limits import MAX_PACKET

REQ: Final = b"\0REQ"
RES: Final = b"\0RES"
HEADER: Final = struct.Struct(">4sII")
HEADER_SIZE: Final = HEADER.size

#: A larger declared size is not Gearman (a packet is buffered whole until it is complete;
#: the tap bounds all such buffers together, see broker.limits.PARSE_BUDGET).
DEFAULT_MAX_PACKET = MAX_PACKET
#: an admin command or reply line longer than this is garbage, not a command.
DEFAULT_MAX_LINE = 64 * 1024


class PacketType(IntEnum):
    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    ALL_YOURS = 24
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34
    SUBMIT_JOB_SCHED = 35
    SUBMIT_JOB_EPOCH = 36
    SUBMIT_REDUCE_JOB = 37
    SUBMIT_REDUCE_JOB_BACKGROUND = 38
    GRAB_JOB_ALL = 39
    JOB_ASSIGN_ALL = 40
    GET_STATUS_UNIQUE = 41
    STATUS_RES_UNIQUE = 42


T = PacketType

#: How many NUL-separated arguments each packet type carries. The last argument is opaque
#: data and may itself contain NULs. (WORK_STATUS is sent by workers and relayed to
#: clients with the same shape.)
ARG_COUNT: Final[dict[int, int]] = {
    T.CAN_DO: 1, T.CANT_DO: 1, T.RESET_ABILITIES: 0, T.PRE_SLEEP: 0, T.NOOP: 0,
    T.SUBMIT_JOB: 3, T.JOB_CREATED: 1, T.GRAB_JOB: 0, T.NO_JOB: 0, T.JOB_ASSIGN: 3,
    T.WORK_STATUS: 3, T.WORK_COMPLETE: 2, T.WORK_FAIL: 1, T.GET_STATUS: 1,
    T.ECHO_REQ: 1, T.ECHO_RES: 1, T.SUBMIT_JOB_BG: 3, T.ERROR: 2, T.STATUS_RES: 5,
    T.SUBMIT_JOB_HIGH: 3, T.SET_CLIENT_ID: 1, T.CAN_DO_TIMEOUT: 2, T.ALL_YOURS: 0,
    T.WORK_EXCEPTION: 2, T.OPTION_REQ: 1, T.OPTION_RES: 1, T.WORK_DATA: 2,
    T.WORK_WARNING: 2, T.GRAB_JOB_UNIQ: 0, T.JOB_ASSIGN_UNIQ: 4, T.SUBMIT_JOB_HIGH_BG: 3,
    T.SUBMIT_JOB_LOW: 3, T.SUBMIT_JOB_LOW_BG: 3, T.SUBMIT_JOB_SCHED: 8,
    T.SUBMIT_JOB_EPOCH: 4, T.SUBMIT_REDUCE_JOB: 4, T.SUBMIT_REDUCE_JOB_BACKGROUND: 4,
    T.GRAB_JOB_ALL: 0, T.JOB_ASSIGN_ALL: 5, T.GET_STATUS_UNIQUE: 1,
    T.STATUS_RES_UNIQUE: 6,
}

SUBMIT_TYPES: Final = frozenset({
    T.SUBMIT_JOB, T.SUBMIT_JOB_BG, T.SUBMIT_JOB_HIGH, T.SUBMIT_JOB_HIGH_BG,
    T.SUBMIT_JOB_LOW, T.SUBMIT_JOB_LOW_BG, T.SUBMIT_JOB_SCHED, T.SUBMIT_JOB_EPOCH,
    T.SUBMIT_REDUCE_JOB, T.SUBMIT_REDUCE_JOB_BACKGROUND,
})


@dataclass(frozen=True, slots=True)
class Packet:
    """One binary packet. ``args`` holds exactly ``ARG_COUNT[type]`` byte strings."""

    request: bool
    type: int
    args: tuple[bytes, ...]

    def to_bytes(self) -> bytes:
        body = b"\0".join(self.args)
        return HEADER.pack(REQ if self.request else RES, self.type, len(body)) + body

    @property
    def name(self) -> str:
        try:
            return PacketType(self.type).name
        except ValueError:
            return f"UNKNOWN_{self.type}"


@dataclass(frozen=True, slots=True)
class AdminLine:
    """One line of the text admin protocol, without its line ending."""

    text: bytes

    def to_bytes(self) -> bytes:
        return self.text + b"\n"


@dataclass(frozen=True, slots=True)
class DecodeError:
    """What went wrong and how many bytes were thrown away to get past it."""

    message: str
    skipped: int


Item = Packet | AdminLine | DecodeError


def req(ptype: int, *args: bytes) -> Packet:
    return Packet(True, ptype, args)


def res(ptype: int, *args: bytes) -> Packet:
    return Packet(False, ptype, args)


def _split_args(ptype: int, body: bytes) -> tuple[bytes, ...] | None:
    count = ARG_COUNT[ptype]
    if count == 0:
        return () if not body else None
    if count == 1:
        return (body,)
    parts = body.split(b"\0", count - 1)
    if len(parts) != count:
        return None
    return tuple(parts)


class Parser:
    """Incremental decoder for one direction of one connection.

    ``feed()`` accepts any chunking of the stream (a byte at a time works) and returns every
    item completed by that chunk. After :meth:`resync` (bytes were lost) it hunts for the
    next plausible binary header and discards what came before it, reporting the amount.
    """

    __slots__ = ("_buf", "_hunting", "max_line", "max_packet")

    def __init__(
        self, *, max_packet: int = DEFAULT_MAX_PACKET, max_line: int = DEFAULT_MAX_LINE
    ) -> None:
        self._buf = bytearray()
        self._hunting = False
        self.max_packet = max_packet
        self.max_line = max_line

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def hunting(self) -> bool:
        return self._hunting

    def resync(self) -> None:
        """Forget partial input: the next bytes do not follow the previous ones."""
        self._buf.clear()
        self._hunting = True

    def feed(self, data: bytes | bytearray | memoryview) -> list[Item]:
        buf = self._buf
        buf += data
        out: list[Item] = []
        pos = 0
        end = len(buf)
        while pos < end:
            if self._hunting:
                found = self._find_header(buf, pos)
                if found < 0:
                    # Keep the last 3 bytes: they may be the start of a split magic.
                    keep = max(pos, end - 3)
                    if keep > pos:
                        out.append(DecodeError("resync: no packet header yet", keep - pos))
                    pos = keep
                    break
                if found > pos:
                    out.append(DecodeError("resync: skipped bytes to next header", found - pos))
                pos = found
                self._hunting = False
            if buf[pos] == 0:
                pos, item = self._binary(buf, pos, end)
            else:
                pos, item = self._line(buf, pos, end)
            if item is None:
                break
            out.append(item)
        del buf[:pos]
        return out

    def _binary(self, buf: bytearray, pos: int, end: int) -> tuple[int, Item | None]:
        if end - pos < HEADER_SIZE:
            head = bytes(buf[pos : min(end, pos + 4)])
            if not (REQ.startswith(head) or RES.startswith(head)):
                return self._bad_header(buf, pos, end)
            return pos, None
        magic, ptype, size = HEADER.unpack_from(buf, pos)
        if (magic != REQ and magic != RES) or ptype not in ARG_COUNT:
            return self._bad_header(buf, pos, end)
        if size > self.max_packet:
            self._hunting = True
            return pos + HEADER_SIZE, DecodeError(f"packet of {size} bytes over limit", HEADER_SIZE)
        stop = pos + HEADER_SIZE + size
        if stop > end:
            return pos, None
        body = bytes(buf[pos + HEADER_SIZE : stop])
        args = _split_args(ptype, body)
        if args is None:
            name = PacketType(ptype).name
            return stop, DecodeError(f"{name} with wrong argument count", stop - pos)
        return stop, Packet(magic == REQ, ptype, args)

    def _bad_header(self, buf: bytearray, pos: int, end: int) -> tuple[int, Item | None]:
        self._hunting = True
        nxt = self._find_header(buf, pos + 1)
        skip_to = nxt if nxt >= 0 else max(pos + 1, end - 3)
        return skip_to, DecodeError("invalid packet header", skip_to - pos)

    def _line(self, buf: bytearray, pos: int, end: int) -> tuple[int, Item | None]:
        nl = buf.find(b"\n", pos, min(end, pos + self.max_line + 1))
        if nl < 0:
            if end - pos > self.max_line:
                # skip just past the limit; the header hunt finds what follows
                self._hunting = True
                return pos + self.max_line + 1, DecodeError(
                    "admin line over limit", self.max_line + 1)
            return pos, None
        text = bytes(buf[pos:nl])
        if text.endswith(b"\r"):
            text = text[:-1]
        return nl + 1, AdminLine(text)

    @staticmethod
    def _find_header(buf: bytearray, start: int) -> int:
        """Index of the next ``\\0REQ``/``\\0RES`` whose type is known, or -1."""
        pos = start
        while True:
            pos = buf.find(b"\0RE", pos)
            if pos < 0:
                return -1
            if pos + 4 > len(buf):
                return pos
            if buf[pos + 3] in (0x51, 0x53):  # Q or S
                if pos + 8 > len(buf):
                    return pos
                ptype = int.from_bytes(buf[pos + 4 : pos + 8], "big")
                if ptype in ARG_COUNT:
                    return pos
            pos += 1
