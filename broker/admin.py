"""Client for gearmand's text admin protocol (same port as the binary protocol).

Multi-line replies (``status``, ``workers``, ``show jobs``, ``show unique jobs``) end with a
line holding a single ``.``; the others are one line, ``OK …`` or ``ERR code message``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

MULTILINE = ("status", "workers", "show jobs", "show unique jobs")


class AdminError(Exception):
    """gearmand answered ERR, or could not be reached."""


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


class AdminClient:
    """One connection, many commands. Blocking, with a timeout on every read."""

    def __init__(self, host: str, port: int, timeout: float = 3.0) -> None:
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise AdminError(f"cannot reach gearmand at {host}:{port}: {exc}") from exc
        self._file = self._sock.makefile("rb")

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, cmd: str) -> list[str]:
        try:
            self._sock.sendall(cmd.encode() + b"\n")
            if cmd in MULTILINE:
                return self._until_dot()
            return [self._line()]
        except OSError as exc:
            raise AdminError(f"{cmd!r} failed: {exc}") from exc

    def _line(self) -> str:
        raw = self._file.readline()
        if not raw:
            raise AdminError("gearmand closed the connection")
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith("ERR"):
            raise AdminError(line)
        return line

    def _until_dot(self) -> list[str]:
        lines = []
        while (line := self._line()) != ".":
            lines.append(line)
        return lines

    def getpid(self) -> str:
        return self.command("getpid")[0].removeprefix("OK ").strip()

    def version(self) -> str:
        return self.command("version")[0].removeprefix("OK ").strip()

    def status(self) -> list[FunctionStatus]:
        out = []
        for line in self.command("status"):
            parts = line.split("\t")
            if len(parts) >= 4:
                out.append(FunctionStatus(parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
        return out

    def workers(self) -> list[WorkerLine]:
        out = []
        for line in self.command("workers"):
            head, _, funcs = line.partition(" : ")
            if not _:
                head, funcs = line.rstrip(" :"), ""
            bits = head.split(" ")
            if len(bits) < 3:
                continue
            fd, address, client_id = bits[0], bits[1], bits[2]
            out.append(WorkerLine(int(fd), address, "" if client_id == "-" else client_id,
                                  tuple(funcs.split())))
        return out
