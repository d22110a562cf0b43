"""The tcpdump process behind capture mode, and whether this host lets us run one.

:class:`Tcpdump` starts ``tcpdump -U -w -`` on gearmand's port with a BPF filter that keeps
only the segments worth reading (:func:`bpf_filter`), hands back the pipe it writes the
pcap stream to, and reads its stderr for readiness, kernel drop counters and errors.
:func:`capture_allowed` decides capture vs proxy mode by default.
"""

from __future__ import annotations

import contextlib
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import IO


class CaptureError(RuntimeError):
    """tcpdump could not be started or exited with an error (its stderr is the message)."""


def bpf_filter(port: int) -> str:
    """A filter for ``port`` that keeps SYN/FIN/RST and segments with payload only.

    Pure ACKs are half the segments of a busy connection and carry nothing we need, so
    dropping them in the kernel halves the work. The payload length comes from the IP
    and TCP header fields. libpcap's ``tcp[]`` works for IPv4 only, so IPv6 reads the TCP
    header at its fixed offset (``tcp port`` already requires next header = TCP there).
    A zero IPv4 total length (segmentation offload) underflows to non-zero: kept.
    """
    ipv4 = (
        "(ip and (tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0"
        " or ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2) != 0))"
    )
    ipv6 = "(ip6 and (ip6[53] & 0x7 != 0 or ip6[4:2] - ((ip6[52] & 0xf0) >> 2) != 0))"
    return f"tcp port {port} and ({ipv4} or {ipv6})"


@dataclass(frozen=True, slots=True)
class TcpdumpCommand:
    """What to capture and how: the command line of one tcpdump."""

    interface: str
    port: int
    tcpdump: str = "tcpdump"
    snaplen: int = 262144
    buffer_kib: int = 65536
    immediate: bool = False

    def argv(self) -> list[str]:
        cmd = [self.tcpdump, "-U", "-w", "-", "-n", "-B", str(self.buffer_kib)]
        cmd += ["-s", str(self.snaplen), "-i", self.interface]
        if self.immediate:
            cmd.append("--immediate-mode")
        return [*cmd, bpf_filter(self.port)]


#: What tcpdump prints on stderr (at exit, and on SIGUSR1) → our counter of it.
_COUNTERS = (
    (re.compile(r"(\d+) packets? dropped by kernel"), "kernel_drops"),
    (re.compile(r"(\d+) packets? received by filter"), "received_by_filter"),
    (re.compile(r"(\d+) packets? captured"), "captured"),
)


class Tcpdump:
    """One tcpdump process: :meth:`start` it, read its pipe, :meth:`stop` and :meth:`reap`.

    Its counters (kernel drops) are read from its stderr, where it prints them when it
    exits and whenever :meth:`request_stats` sends it SIGUSR1. ``ready`` is set once it
    listens (or has exited). Call :meth:`stop` from any thread.
    """

    def __init__(self, command: TcpdumpCommand) -> None:
        self.command = command
        self.ready = threading.Event()
        self.counters = {"kernel_drops": 0, "received_by_filter": 0, "captured": 0}
        self.returncode: int | None = None
        self._stderr: deque[str] = deque(maxlen=20)
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._stopping = False
        self._kill_at = float("inf")

    def start(self) -> int:
        """Start tcpdump; returns the file descriptor of the pipe it writes pcap to."""
        try:
            proc = subprocess.Popen(
                self.command.argv(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                # Its own session: a Ctrl-C or SIGTERM to our process group must not end
                # tcpdump before we have read what its buffer holds; we stop it ourselves.
                # (Should we die by SIGKILL, its next write hits a closed pipe: SIGPIPE.)
                start_new_session=True,
            )
        except OSError as exc:
            self.ready.set()
            raise CaptureError(f"cannot start {self.command.tcpdump}: {exc}") from exc
        self._proc = proc
        if self._stopping:
            proc.terminate()
        assert proc.stdout is not None and proc.stderr is not None
        self._reader = threading.Thread(
            target=self._read_stderr, args=(proc.stderr,), name="tcpdump-stderr", daemon=True
        )
        self._reader.start()
        return proc.stdout.fileno()

    def stop(self) -> None:
        """Ask tcpdump to exit (it is killed if it has not within 5 s, see :meth:`overdue`)."""
        self._stopping = True
        self._kill_at = time.monotonic() + 5.0
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def terminate(self) -> None:
        if self._proc is not None:
            self._proc.terminate()

    def overdue(self, now: float) -> None:
        """Kill a tcpdump that was asked to stop and is still running at ``now``."""
        proc = self._proc
        if now >= self._kill_at and proc is not None and proc.poll() is None:
            proc.kill()

    def request_stats(self) -> None:
        """SIGUSR1 makes tcpdump print its counters; only once its handler is installed."""
        proc = self._proc
        if self.ready.is_set() and proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGUSR1)

    def reap(self) -> None:
        """Wait for the exit (killing after 5 s), read the last counters, close the pipe."""
        proc = self._proc
        if proc is None:
            return
        try:
            self.returncode = proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            self.returncode = proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5.0)
        if proc.stdout is not None:
            proc.stdout.close()

    def failure(self) -> str | None:
        """Why tcpdump ended, when it ended by itself with an error; else None."""
        if self.returncode and not self._stopping:
            return f"{self.command.tcpdump} exited with {self.returncode}: " + " | ".join(
                self._stderr
            )
        return None

    def _read_stderr(self, stream: IO[bytes]) -> None:
        """Collect tcpdump's messages: readiness, counters, and errors for CaptureError."""
        try:
            for raw in stream:
                line = raw.decode("utf-8", "replace").strip()
                self._stderr.append(line)
                if "listening on" in line:
                    self.ready.set()
                for pattern, name in _COUNTERS:
                    match = pattern.search(line)
                    if match:
                        self.counters[name] = int(match.group(1))
        finally:
            stream.close()
            self.ready.set()


# ------------------------------------------------------------------------------------------
# may we capture?

_CAP_NET_RAW = 13


def capture_allowed(
    tcpdump: str = "tcpdump",
    interface: str = "any",
    timeout: float = 5.0,
) -> bool:
    """Whether this process can run a capture (decides capture vs proxy mode by default).

    CAP_NET_RAW in our effective set (root usually has it) settles it without starting
    anything; otherwise tcpdump may still hold the capability itself (file capabilities),
    so try it: a tcpdump that reports "listening on" within ``timeout`` can capture.
    """
    if shutil.which(tcpdump) is None:
        return False
    if _has_cap_net_raw():
        return True
    return _probe(tcpdump, interface, timeout)


def _has_cap_net_raw() -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_NET_RAW & 1)
    except (OSError, ValueError):
        pass
    return False


def _probe(tcpdump: str, interface: str, timeout: float) -> bool:
    cmd = [tcpdump, "-w", "-", "-c", "1", "-i", interface, "tcp port 1 and tcp port 2"]
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    except OSError:
        return False
    assert proc.stderr is not None
    try:
        ready, _, _ = select.select([proc.stderr], [], [], timeout)
        return bool(ready) and b"listening on" in proc.stderr.readline()
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
