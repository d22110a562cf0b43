"""Sit in front of a gearmand: forward every byte unchanged, record a copy."""

import multiprocessing
import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from broker.admin import parse_address
from broker.launcher import run_proxy
from broker.pipe import PipeSink, make_pipe
from broker.proxy import Address
from broker.shippers import ShipMode
from hq.tap import child as tapchild
from hq.tap.runner import TapRunner


class Command(BaseCommand):
    help = "Proxy Gearman traffic to gearmand and record every job (for hosts without capture)."

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
        runner.start()
        try:
            run_proxy(listen, upstream, lambda: runner.sink, 1, ship=ship)
        finally:
            runner.stop()

    def _with_child(self, listen: Address, upstream: Address, server: str) -> None:
        """Forward here; parse, track and ingest in a child process (hq/tap/child.py)."""
        read_fd, write_fd = make_pipe()
        ctx = multiprocessing.get_context("fork")  # before any loop or thread exists here
        child = ctx.Process(target=tapchild.run, args=(read_fd, write_fd, server, upstream),
                            name="hq-proxy-tap")
        child.start()
        os.close(read_fd)
        sink = PipeSink(write_fd)
        try:
            run_proxy(listen, upstream, lambda: sink, 1, ship="inline")
        finally:
            sink.close()  # the child sees the end of the pipe, flushes and exits
            child.join(60)
            if child.exitcode is None:
                child.terminate()
            self.stderr.write(f"proxy copies: {sink.counters}")
