"""Watch a gearmand passively: tcpdump on its port → tracker → Postgres."""

import logging
import signal
import sys
import threading
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from broker.capture import CaptureSource
from broker.tcpdump import CaptureError
from hq.tap.runner import TapRunner
from hq.tap.threads import EXIT_THREAD_DIED

log = logging.getLogger("hq.tap")
DRAIN_MAX_S = 10.0
QUIET_S = 1.5


class Command(BaseCommand):
    help = "Record every job of a gearmand by capturing its traffic (needs root or CAP_NET_RAW)."
    # a long-running recorder: Django's system checks import every URL, view and the REST
    # framework (~20 MB a tap keeps for ever); `manage.py check` and migrate run them
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--interface", default="lo", help="interface to capture on")
        parser.add_argument("--port", type=int, default=4730, help="gearmand's port")
        parser.add_argument("--server", default=settings.HQ_SERVER_NAME,
                            help="name of this gearmand in HQ")
        parser.add_argument("--gearman-host", default="127.0.0.1",
                            help="where to ask gearmand for its pid (admin protocol)")
        parser.add_argument("--buffer-mib", type=int, default=64,
                            help="kernel capture buffer: absorbs bursts the tap is slow on")

    def handle(self, *args: Any, **opts: Any) -> None:
        runner = TapRunner(opts["server"], (opts["gearman_host"], opts["port"]))
        if opts["buffer_mib"] < 1:
            raise CommandError("--buffer-mib must be at least 1")
        source = CaptureSource(opts["interface"], opts["port"], runner.sink,
                               buffer_kib=opts["buffer_mib"] * 1024)
        runner.source_stats = source.stats
        stopping = threading.Event()

        def on_signal(*_: object) -> None:
            if stopping.is_set():  # a second signal: stop now
                source.stop()
                return
            stopping.set()
            runner.quiesce()
            threading.Thread(target=self._drain_then_stop, args=(source,), daemon=True).start()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        runner.watch.on_death = lambda why: source.stop()  # a dead thread ends the capture
        runner.start()
        threading.Thread(target=self._announce, args=(source, opts), daemon=True).start()
        started = time.monotonic()
        try:
            if not runner.watch.dead:
                source.run()
        except CaptureError as exc:
            raise CommandError(f"capture failed: {exc}. Without capture rights, run "
                               "gearman_proxy instead (HQ_TAP_MODE=proxy).") from exc
        finally:
            runner.stop()
        log.info("capture ran %.1f s", time.monotonic() - started)
        if runner.watch.dead:
            raise CommandError(f"capture stopped because a tap {runner.watch.dead}",
                               returncode=EXIT_THREAD_DIED)

    @staticmethod
    def _drain_then_stop(source: CaptureSource) -> None:
        """Under load the tap may run seconds behind the wire, with packets still waiting
        in the kernel buffer; tcpdump exits without them. So keep reading until nothing
        new arrives for QUIET_S (longer than tcpdump's 1 s block timeout, so its last
        partial block is in), at most DRAIN_MAX_S, then stop tcpdump."""
        log.info("stopping: reading what the capture buffer still holds")
        deadline = time.monotonic() + DRAIN_MAX_S
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            frames = source.pcap.frames
            if frames != seen:
                seen, quiet_since = frames, time.monotonic()
            elif time.monotonic() - quiet_since >= QUIET_S:
                break
            time.sleep(0.1)
        source.stop()

    def _announce(self, source: CaptureSource, opts: dict[str, Any]) -> None:
        """One line once tcpdump listens: scripts and tests wait for it."""
        source.ready.wait()
        sys.stderr.write(f"HQ capture ready: {opts['interface']} port {opts['port']} "
                         f"as server {opts['server']!r}\n")
        sys.stderr.flush()
