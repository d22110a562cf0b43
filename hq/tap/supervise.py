"""Proxy mode: the forwarding process keeps its decoding child alive.

The proxy forwards in one process and decodes copies in a child (``hq/tap/child.py``),
fed through a pipe (``broker/pipe.py``). Were the child to die, the proxy would go on
forwarding and nothing would be recorded. So:

* :class:`ChildSink` is the proxy's sink: a ``PipeSink`` to the current child's pipe.
  When the pipe breaks (the child is gone) copies are dropped — never the traffic — and
  owed per connection as gaps (``broker.loss``); when a new child's pipe arrives, every
  open connection is announced to it as joined mid-stream and the owed gaps are reported
  before its next bytes, so the new child's parsers resynchronise;
* :class:`ChildSupervisor` waits on the child from a thread, logs why it ended, starts a
  new one with backoff (0.5 s doubling to 30 s; back to 0.5 s after a minute of running)
  and reports ``child_restarts``, ``child_alive`` and the traffic not recorded
  (``child_lost_bytes``: at least; what the dead child had not read yet is unknown) to
  Redis as the ``proxy`` section of the tap's stats, every few seconds.

The child is a fresh interpreter (``python -m hq.tap.child``), never a fork of this
process: by the time a restart is needed the forwarding loop and its threads run here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from django.conf import settings

from broker.loss import Losses
from broker.pipe import PipeSink, make_pipe
from broker.stream import ConnKey
from monitoring import taps

log = logging.getLogger("hq.tap")

RESTART_FIRST_S, RESTART_MAX_S = 0.5, 30.0
#: a child that ran this long was healthy: the next restart starts from the first delay
STABLE_S = 60.0
REPORT_EVERY_S = 5.0


class ChildSink:
    """A sink in front of whichever decoding child is current (called from the proxy's
    event loop only; :meth:`replace` from the supervisor thread)."""

    def __init__(self, write_fd: int) -> None:
        self._pipe: PipeSink | None = PipeSink(write_fd)
        self._fd: int | None = write_fd
        self._next: int | None = None
        self._switch_lock = threading.Lock()
        self._open: set[ConnKey] = set()
        self.losses = Losses()
        self.lost_backlog = 0
        self.breaks = 0
        self._retired = {"batches": 0, "dropped_chunks": 0, "dropped_bytes": 0}

    @property
    def connected(self) -> bool:
        return self._pipe is not None

    @property
    def counters(self) -> dict[str, int]:
        pipe = self._pipe.counters if self._pipe is not None else {}
        total = {k: v + pipe.get(k, 0) for k, v in self._retired.items()}
        return {**total, "child_lost_chunks": self.losses.dropped_chunks,
                "child_lost_bytes": self.losses.dropped_bytes + self.lost_backlog,
                "pipe_breaks": self.breaks}

    def replace(self, write_fd: int) -> None:
        """A new child reads the other end of ``write_fd``: switch to it at the next call."""
        with self._switch_lock:
            if self._next is not None:
                with contextlib.suppress(OSError):
                    os.close(self._next)
            self._next = write_fd

    def _current(self) -> PipeSink | None:
        if self._next is not None:
            self._switch()
        return self._pipe

    def _switch(self) -> None:
        with self._switch_lock:
            fd, self._next = self._next, None
        if fd is None:
            return
        self._retire()
        pipe = self._pipe = PipeSink(fd)
        self._fd = fd
        now = time.time()
        for conn in self._open:  # the new child knows nothing of them: mid-stream
            pipe.on_open(conn, now, mid_stream=True)

    def _retire(self, *, lost: bool = True) -> None:
        """Forget the current pipe (its child is gone: what it still held is lost)."""
        if self._pipe is not None:
            if lost:
                self.lost_backlog += self._pipe.backlog
            for k, v in self._pipe.counters.items():
                if k in self._retired:
                    self._retired[k] += v
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._pipe = self._fd = None

    def _broke(self) -> None:
        self.breaks += 1
        self._retire()

    # -- StreamSink ---------------------------------------------------------------------

    def on_open(self, conn: ConnKey, ts: float, *, mid_stream: bool = False) -> None:
        self._open.add(conn)
        pipe = self._current()
        if pipe is not None:
            try:
                pipe.on_open(conn, ts, mid_stream=mid_stream)
            except OSError:
                self._broke()

    def on_data(self, conn: ConnKey, from_peer: bool, data: bytes, ts: float) -> None:
        pipe = self._current()
        if pipe is None:
            self.losses.drop(conn, from_peer, len(data))
            return
        try:
            if self.losses.owed:
                self.losses.settle(conn, from_peer, ts, pipe.on_gap)
            pipe.on_data(conn, from_peer, data, ts)
        except OSError:
            self._broke()
            self.losses.drop(conn, from_peer, len(data))

    def on_gap(self, conn: ConnKey, from_peer: bool, ts: float, lost: int) -> None:
        pipe = self._current()
        if pipe is None:
            self.losses.drop(conn, from_peer, max(lost, 0))
            return
        try:
            pipe.on_gap(conn, from_peer, ts, lost)
        except OSError:
            self._broke()

    def on_close(self, conn: ConnKey, ts: float) -> None:
        self._open.discard(conn)
        pipe = self._current()
        if pipe is None:
            for from_peer in (True, False):  # a child that never saw it needs no gap
                self.losses.owed.pop((conn, from_peer), None)
            return
        try:
            self.losses.settle_both(conn, ts, pipe.on_gap)
            pipe.on_close(conn, ts)
        except OSError:
            self._broke()

    def flush(self) -> None:
        pipe = self._current()
        if pipe is not None:
            try:
                pipe.flush()
            except OSError:
                self._broke()

    def close(self) -> None:
        """Forwarding stopped: send the rest to the child and close the pipe."""
        pipe = self._current()
        if pipe is None:
            return
        try:
            pipe.close()  # closes the pipe's fd too
        except OSError:
            self._broke()
            return
        self._fd = None
        self._retire(lost=False)


def _how_it_ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class ChildSupervisor:
    """Starts the decoding child, restarts it when it ends, reports how it goes."""

    def __init__(self, server: str, upstream: tuple[str, int]) -> None:
        self.server = server
        self.upstream = upstream
        self.restarts = 0
        self.down_s = 0.0
        self.last_exit = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.sink: ChildSink | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._spawned_at = 0.0

    def start(self) -> ChildSink:
        self.sink = ChildSink(self._spawn())
        return self.sink

    def _spawn(self) -> int:
        read_fd, write_fd = make_pipe()
        host, port = self.upstream
        cmd = [sys.executable, "-m", "hq.tap.child", "--fd", str(read_fd),
               "--server", self.server, "--upstream", f"{host}:{port}",
               "--incarnation", str(self.restarts)]
        path = os.pathsep.join(p for p in (str(settings.BASE_DIR),
                                           os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": path,
               "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE",
                                                        "hq.settings")}
        try:
            self.proc = subprocess.Popen(cmd, pass_fds=(read_fd,), env=env,
                                         cwd=settings.BASE_DIR)
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        self._spawned_at = time.monotonic()
        log.info("proxy decoding child started (pid %d)", self.proc.pid)
        return write_fd

    def run(self) -> None:
        """The supervisor thread: wait for the child; when it ends, start another."""
        delay = RESTART_FIRST_S
        self.report()
        while not self._stopping.is_set():
            proc = self.proc
            assert proc is not None
            try:
                code = proc.wait(timeout=REPORT_EVERY_S)
            except subprocess.TimeoutExpired:
                self.report()
                continue
            if self._stopping.is_set():
                return
            if time.monotonic() - self._spawned_at >= STABLE_S:
                delay = RESTART_FIRST_S
            delay = self._restart(proc, code, delay)

    def _restart(self, proc: subprocess.Popen[bytes], code: int, delay: float) -> float:
        died_at = time.monotonic()
        self.last_exit = _how_it_ended(code)
        log.error("the proxy's decoding child (pid %d) %s after %.0f s: traffic is forwarded "
                  "but not recorded until it is back; restarting it in %.1f s", proc.pid,
                  self.last_exit, died_at - self._spawned_at, delay)
        self.report(alive=False)
        if self._stopping.wait(delay):
            return delay
        with self._lock:
            if self._stopping.is_set():
                return delay
            self.restarts += 1
            fd = self._spawn()
            assert self.sink is not None
            self.sink.replace(fd)
        self.down_s += time.monotonic() - died_at
        lost = self.sink.counters
        log.warning("proxy decoding child restarted (restart %d) after %.1f s down; so far "
                    "%d bytes in %d chunks were forwarded unrecorded (at least)", self.restarts,
                    time.monotonic() - died_at, lost["child_lost_bytes"],
                    lost["child_lost_chunks"])
        self.report()
        return min(delay * 2, RESTART_MAX_S)

    def report(self, *, alive: bool | None = None) -> None:
        proc = self.proc
        running = proc is not None and proc.poll() is None
        data: dict[str, Any] = {
            "child_alive": running if alive is None else alive,
            "child_pid": proc.pid if proc is not None else None,
            "child_restarts": self.restarts, "child_down_s": round(self.down_s, 1),
            "child_last_exit": self.last_exit, "stopping": self._stopping.is_set(),
            **(self.sink.counters if self.sink is not None else {}),
        }
        taps.tap_section_to_redis(self.server, "proxy", data)

    def stop(self, timeout: float = 60.0) -> None:
        """Forwarding has stopped: let the child drain the pipe and flush, then end."""
        with self._lock:
            self._stopping.set()
        if self.sink is not None:
            self.sink.close()  # the child sees the end of the pipe, flushes and exits
        proc = self.proc
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("proxy decoding child did not finish in %.0f s: terminating it",
                          timeout)
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.report(alive=False)
