"""Client for gearmand's text admin protocol (same port as the binary protocol).

Multi-line replies (``status``, ``workers``, ``show jobs``, ``show unique jobs``) end with a
line holding a single ``.``; the others are one line, ``OK …`` or ``ERR code message``.

Whatever the other end sends, only :class:`AdminError` leaves :class:`AdminClient`: a
reply line is at most ``ADMIN_LINE_MAX`` bytes, a reply at most ``ADMIN_LINES_MAX``
lines, a command takes at most ``ADMIN_REPLY_S`` seconds (each read also has the client's
timeout). A reply line that does not parse (too few fields, a count that is not a number,
a name over 255 bytes or with a NUL) is skipped and counted in ``AdminClient.skipped``.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from .limits import (
    ADMIN_LINE_MAX,
    ADMIN_LINES_MAX,
    ADMIN_REPLY_S,
    FUNCTION_MAX,
    HANDLE_MAX,
    INT8_MAX,
    PID_MAX,
    VERSION_MAX,
    WORKER_MAX,
)
from .values import note

MULTILINE = ("status", "workers", "show jobs", "show unique jobs")


class AdminError(Exception):
    """gearmand answered ERR, could not be reached, or answered something unusable."""


@dataclass(frozen=True, slots=True)
class FunctionStatus:
    function: str
    total: int  # queued + running
    running: int
    workers: int


@dataclass(frozen=True, slots=True)
class WorkerLine:
    fd: int
    address: str
    client_id: str
    functions: tuple[str, ...]


def parse_address(text: str, default_port: int = 4730) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port`` or ``host``) → (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest.lstrip(":") or default_port)
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    return host or "127.0.0.1", int(port)


def _count(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= INT8_MAX else None


def _name(text: str, limit: int) -> str | None:
    """A name from a reply line, or None when it could not be stored as one."""
    if "\0" in text or len(text.encode("utf-8", "surrogateescape")) > limit:
        return None
    return text


def parse_status(line: str) -> FunctionStatus | None:
    """``FUNC\\tTOTAL\\tRUNNING\\tWORKERS``, read from the right (a name may hold a tab)."""
    parts = line.rsplit("\t", 3)
    if len(parts) != 4:
        return None
    function = _name(parts[0], FUNCTION_MAX)
    total, running, workers = (_count(p) for p in parts[1:])
    if function is None or total is None or running is None or workers is None:
        return None
    return FunctionStatus(function, total, running, workers)


def parse_worker(line: str) -> tuple[WorkerLine | None, int]:
    """``FD IP CLIENT_ID : FUNC ...`` → (the worker or None, how many names were dropped)."""
    head, sep, funcs = line.partition(" : ")
    if not sep:
        head, funcs = line.rstrip(" :"), ""
    bits = head.split(" ", 2)
    if len(bits) < 3:
        return None, 0
    fd, address, client_id = _count(bits[0]), _name(bits[1], WORKER_MAX), bits[2]
    name = _name(client_id, WORKER_MAX)
    if fd is None or address is None or name is None:
        return None, 0
    names = funcs.split()
    good = tuple(f for f in names if _name(f, FUNCTION_MAX) is not None)
    return WorkerLine(fd, address, "" if name == "-" else name, good), len(names) - len(good)


class AdminClient:
    """One connection, many commands. Blocking, with a timeout on every read and a
    deadline on every command."""

    def __init__(self, host: str, port: int, timeout: float = 3.0) -> None:
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout)
        except (OSError, OverflowError, ValueError, UnicodeError) as exc:
            raise AdminError(f"cannot reach gearmand at {host}:{port}: {exc}") from exc
        self.timeout = timeout
        self._buf = bytearray()
        self._deadline = 0.0
        #: reply lines (or names in them) that did not parse and were left out
        self.skipped = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, cmd: str) -> list[str]:
        if "\n" in cmd or "\r" in cmd or "\0" in cmd:
            raise AdminError(f"not one admin command: {cmd!r}")
        self._deadline = time.monotonic() + ADMIN_REPLY_S
        try:
            self._sock.sendall(cmd.encode() + b"\n")
            first = self._line()
            if first.startswith("ERR") and "\t" not in first:
                raise AdminError(note(first, 200))
            if cmd in MULTILINE:
                return self._until_dot(first)
            return [first]
        except OSError as exc:
            raise AdminError(f"{cmd!r} failed: {exc}") from exc

    def _line(self) -> str:
        """One reply line, undecodable bytes escaped as the tracker escapes them."""
        return self._read_line().decode("utf-8", "backslashreplace").rstrip("\r")

    def _read_line(self) -> bytes:
        buf = self._buf
        while True:
            nl = buf.find(b"\n", 0, ADMIN_LINE_MAX + 1)
            if nl >= 0:
                raw = bytes(buf[:nl])
                del buf[: nl + 1]
                return raw
            if len(buf) > ADMIN_LINE_MAX:
                raise AdminError(f"reply line over {ADMIN_LINE_MAX} bytes")
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise AdminError(f"no complete reply within {ADMIN_REPLY_S:g} s")
            self._sock.settimeout(min(self.timeout, left))
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                if left < self.timeout:
                    raise AdminError(f"no complete reply within {ADMIN_REPLY_S:g} s") from None
                raise
            if not chunk:
                raise AdminError("gearmand closed the connection")
            buf += chunk

    def _until_dot(self, line: str) -> list[str]:
        """The lines of a multi-line reply, from its first one (a function or a unique key
        may itself look like ``ERR …``: only the first line can be an error)."""
        lines: list[str] = []
        while line != ".":
            if len(lines) >= ADMIN_LINES_MAX:
                raise AdminError(f"reply over {ADMIN_LINES_MAX} lines")
            lines.append(line)
            line = self._line()
        return lines

    def _ok(self, cmd: str, limit: int) -> str:
        line = self.command(cmd)[0]
        if not line.startswith("OK"):
            raise AdminError(f"unexpected {cmd} reply: {note(line, 80)!r}")
        return note(line.removeprefix("OK").strip(), limit)

    def getpid(self) -> str:
        pid = self._ok("getpid", PID_MAX)
        if not (pid.isascii() and pid.isdigit()):
            raise AdminError(f"unexpected getpid reply: {pid!r}")
        return pid

    def version(self) -> str:
        return self._ok("version", VERSION_MAX)

    def status(self) -> list[FunctionStatus]:
        out = []
        for line in self.command("status"):
            parsed = parse_status(line)
            if parsed is None:
                self.skipped += 1
            else:
                out.append(parsed)
        return out

    def workers(self) -> list[WorkerLine]:
        out = []
        for line in self.command("workers"):
            parsed, dropped = parse_worker(line)
            self.skipped += dropped + (parsed is None)
            if parsed is not None:
                out.append(parsed)
        return out

    def show_jobs(self) -> set[str]:
        """The handles of every job gearmand holds, queued or running (``show jobs``:
        ``handle TAB retries TAB ignore TAB queued`` per line)."""
        held = set()
        for line in self.command("show jobs"):
            handle = line.split("\t", 1)[0]
            if handle and _name(handle, HANDLE_MAX) is not None:
                held.add(handle)
            else:
                self.skipped += 1
        return held
