"""Sit in front of a gearmand: forward every byte unchanged, record a copy."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from broker.admin import parse_address
from broker.proxy import run_proxy
from jobs.taprun import TapRunner


class Command(BaseCommand):
    help = "Proxy Gearman traffic to gearmand and record every job (for hosts without capture)."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--listen", default="127.0.0.1:4730", help="HOST:PORT for clients")
        parser.add_argument("--upstream", default="127.0.0.1:4731", help="gearmand HOST:PORT")
        parser.add_argument("--server", default=settings.HQ_SERVER_NAME,
                            help="name of this gearmand in HQ")
        parser.add_argument("--ship", choices=["inline", "thread"], default="inline",
                            help="decode copies in the event loop or in a thread")

    def handle(self, *args, **opts):  # type: ignore[no-untyped-def]
        try:
            listen = parse_address(opts["listen"])
            upstream = parse_address(opts["upstream"])
        except ValueError as exc:
            raise CommandError(f"bad address: {exc}") from exc
        runner = TapRunner(opts["server"], upstream)
        self.stderr.write(f"proxying {listen[0]}:{listen[1]} -> {upstream[0]}:{upstream[1]} "
                          f"as server {opts['server']!r}")
        runner.start()
        try:
            run_proxy(listen, upstream, lambda: runner.sink, 1, ship=opts["ship"])
        except OSError as exc:
            raise CommandError(f"cannot listen on {opts['listen']}: {exc}") from exc
        finally:
            runner.stop()
