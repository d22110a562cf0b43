"""Sit in front of a gearmand: forward every byte unchanged, record a copy."""

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from broker.admin import parse_address
from broker.launcher import run_proxy
from broker.proxy import Address
from broker.shippers import ShipMode
from hq.tap.runner import TapRunner
from hq.tap.supervise import ChildSupervisor
from hq.tap.threads import EXIT_THREAD_DIED, ThreadWatch


class Command(BaseCommand):
    help = "Proxy Gearman traffic to gearmand and record every job (for hosts without capture)."
    # a long-running recorder: Django's system checks import every URL, view and the REST
    # framework (~20 MB a tap keeps for ever); `manage.py check` and migrate run them
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--listen", default="127.0.0.1:4730", help="HOST:PORT for clients")
        parser.add_argument("--upstream", default="127.0.0.1:4731", help="gearmand HOST:PORT")
        parser.add_argument("--server", default=settings.HQ_SERVER_NAME,
                            help="name of this gearmand in HQ")
        parser.add_argument(
            "--ship", choices=["process", "thread", "inline"], default="process",
            help="where copies are decoded: a child process (default: the other core), "
                 "a thread, or the event loop itself")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            listen = parse_address(opts["listen"])
            upstream = parse_address(opts["upstream"])
        except ValueError as exc:
            raise CommandError(f"bad address: {exc}") from exc
        self.stderr.write(f"proxying {listen[0]}:{listen[1]} -> {upstream[0]}:{upstream[1]} "
                          f"as server {opts['server']!r} (decoding: {opts['ship']})")
        try:
            if opts["ship"] == "process":
                self._with_child(listen, upstream, opts["server"])
            else:
                self._in_process(listen, upstream, opts["server"], opts["ship"])
        except OSError as exc:
            raise CommandError(f"cannot listen on {opts['listen']}: {exc}") from exc

    def _in_process(self, listen: Address, upstream: Address, server: str,
                    ship: ShipMode) -> None:
        runner = TapRunner(server, upstream)
        runner.watch.on_death = lambda why: _stop_proxy()
        runner.start()
        try:
            if not runner.watch.dead:
                run_proxy(listen, upstream, lambda: runner.sink, 1, ship=ship)
        finally:
            runner.stop()
        if runner.watch.dead:
            raise CommandError(f"proxy stopped because a tap {runner.watch.dead}",
                               returncode=EXIT_THREAD_DIED)

    def _with_child(self, listen: Address, upstream: Address, server: str) -> None:
        """Forward here; parse, track and ingest in a child process (hq/tap/child.py),
        restarted whenever it ends (hq/tap/supervise.py)."""
        supervisor = ChildSupervisor(server, upstream)
        sink = supervisor.start()
        watch = ThreadWatch(on_death=lambda why: _stop_proxy())
        watch.install()
        watch.spawn(supervisor.run, "hq-child-supervisor")
        try:
            run_proxy(listen, upstream, lambda: sink, 1, ship="inline")
        finally:
            watch.stopping()
            supervisor.stop()
            self.stderr.write(f"proxy copies: {sink.counters}; decoding child restarts: "
                              f"{supervisor.restarts}")
        if watch.dead:
            raise CommandError(f"proxy stopped because its {watch.dead}",
                               returncode=EXIT_THREAD_DIED)


def _stop_proxy() -> None:
    """End ``run_proxy`` as SIGTERM does (its loop turns the signal into a clean stop)."""
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
