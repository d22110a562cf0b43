"""The admin-protocol client against replies gearmand would never send: only AdminError
leaves it, bad lines are skipped and counted, and no reply can hold it for long.

The other end is a local socket that answers each command with canned bytes (the network
edge); the real gearmand's replies are covered by the interop tests.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import pytest

from broker import admin as admin_module
from broker.admin import AdminClient, AdminError, FunctionStatus, parse_status, parse_worker

Script = Callable[[socket.socket], None]


@contextmanager
def server(script: Script) -> Iterator[int]:
    """A listening socket whose first connection is handed to ``script``."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        with suppress(OSError):  # the listener may be closed before anyone connects
            conn, _ = listener.accept()
            with conn:
                script(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        listener.close()
        thread.join(5)


def answer(*replies: bytes) -> Script:
    """Read one command line per reply and send the reply; then hold the line open."""
    def script(conn: socket.socket) -> None:
        for reply in replies:
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = conn.recv(1024)
                if not chunk:
                    return
                buf += chunk
            conn.sendall(reply)
        conn.settimeout(5)
        conn.recv(1024)
    return script


def test_status_lines_parse_from_the_right_and_bad_ones_are_skipped() -> None:
    reply = (b"reverse\t3\t1\t2\n"
             b"with\ttab\t5\t0\t1\n"  # a function name may hold a tab
             b"ERR-looking\t1\t1\t1\n"  # a name, not an error: only the first line can be
             b"bad\tx\t0\t0\n"
             b"short\t1\t2\n"
             b"nul\x00name\t1\t1\t1\n"
             + b"f" * 300 + b"\t1\t1\t1\n"
             b"huge\t99999999999999999999999\t0\t0\n"
             b"\xff\xfe\t1\t0\t0\n"
             b".\n")
    with server(answer(reply)) as port, AdminClient("127.0.0.1", port, timeout=2) as admin:
        statuses = admin.status()
        assert statuses == [
            FunctionStatus("reverse", 3, 1, 2), FunctionStatus("with\ttab", 5, 0, 1),
            FunctionStatus("ERR-looking", 1, 1, 1), FunctionStatus("\\xff\\xfe", 1, 0, 0)]
        assert admin.skipped == 5


def test_workers_lines_skip_what_does_not_parse() -> None:
    reply = (b"33 127.0.0.1 w-1 : reverse upper\n"
             b"34 ::1 - :\n"
             b"x 127.0.0.1 w-2 : reverse\n"
             b"35 127.0.0.1\n"
             b"36 10.0.0.9 w-3 : ok " + b"g" * 300 + b" also\n"
             b".\n")
    with server(answer(reply)) as port, AdminClient("127.0.0.1", port, timeout=2) as admin:
        workers = admin.workers()
        assert [(w.fd, w.address, w.client_id, w.functions) for w in workers] == [
            (33, "127.0.0.1", "w-1", ("reverse", "upper")), (34, "::1", "", ()),
            (36, "10.0.0.9", "w-3", ("ok", "also"))]
        assert admin.skipped == 3  # two lines and one name


def test_getpid_and_version_are_checked_and_bounded() -> None:
    with server(answer(b"OK 4242\r\n", b"OK " + b"v" * 500 + b"\n", b"OK not-a-pid\n",
                       b"what\n")) as port, AdminClient("127.0.0.1", port, timeout=2) as admin:
        assert admin.getpid() == "4242"
        assert len(admin.version()) <= 64
        with pytest.raises(AdminError, match="getpid"):
            admin.getpid()
        with pytest.raises(AdminError, match="version"):
            admin.version()


def test_err_reply_is_an_admin_error() -> None:
    with server(answer(b"ERR UNKNOWN_COMMAND x\r\n")) as port, \
            AdminClient("127.0.0.1", port, timeout=2) as admin, \
            pytest.raises(AdminError, match="UNKNOWN_COMMAND"):
        admin.status()


def test_reply_without_its_final_dot_is_an_error_not_a_hang() -> None:
    def script(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"reverse\t1\t0\t0\n")  # and then the connection closes
    with server(script) as port, AdminClient("127.0.0.1", port, timeout=2) as admin, \
            pytest.raises(AdminError, match="closed"):
        admin.status()


def test_silent_server_times_out() -> None:
    with server(answer()) as port, AdminClient("127.0.0.1", port, timeout=0.3) as admin:
        started = time.monotonic()
        with pytest.raises(AdminError):
            admin.getpid()
        assert time.monotonic() - started < 5


def test_endless_line_is_cut_off() -> None:
    def script(conn: socket.socket) -> None:
        conn.recv(100)
        chunk = b"x" * 65536
        for _ in range(64):
            conn.sendall(chunk)
    with server(script) as port, AdminClient("127.0.0.1", port, timeout=2) as admin, \
            pytest.raises(AdminError, match="line over"):
        admin.status()


def test_endless_reply_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_module, "ADMIN_LINES_MAX", 1000)

    def script(conn: socket.socket) -> None:
        conn.recv(100)
        for _ in range(100):
            conn.sendall(b"f\t1\t1\t1\n" * 100)
    with server(script) as port, AdminClient("127.0.0.1", port, timeout=2) as admin, \
            pytest.raises(AdminError, match="lines"):
        admin.status()


def test_dribbling_server_hits_the_command_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_module, "ADMIN_REPLY_S", 0.5)

    def script(conn: socket.socket) -> None:
        conn.recv(100)
        for _ in range(100):  # a byte every 50 ms: each read is on time, the reply never is
            conn.sendall(b"f")
            time.sleep(0.05)
    with server(script) as port, AdminClient("127.0.0.1", port, timeout=2) as admin:
        started = time.monotonic()
        with pytest.raises(AdminError, match="within"):
            admin.status()
        assert time.monotonic() - started < 2


@pytest.mark.parametrize(("host", "port"), [("127.0.0.1", 70000), ("bad\0host", 1),
                                            ("127.0.0.1", 1)])
def test_unreachable_or_invalid_address_is_an_admin_error(host: str, port: int) -> None:
    with pytest.raises(AdminError):
        AdminClient(host, port, timeout=0.5)


def test_command_with_a_line_break_is_refused() -> None:
    with server(answer()) as port, AdminClient("127.0.0.1", port, timeout=1) as admin, \
            pytest.raises(AdminError):
        admin.command("status\ncancel job H:x:1")


def test_parsers_never_raise_on_odd_lines() -> None:
    for line in ["", "\t\t\t", "a\tb\tc\td", "\t1\t2\t3", "x\t-1\t0\t0", "x\t１\t0\t0"]:
        parse_status(line)
        parse_worker(line)
    assert parse_status("\t1\t2\t3") == FunctionStatus("", 1, 2, 3)
    assert parse_status("x\t-1\t0\t0") is None and parse_status("x\t１\t0\t0") is None
