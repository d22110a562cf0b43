"""Run the demo workload against gearmand (see hq/demo.py)."""

import asyncio
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from broker.client import parse_servers
from hq.demo import run_demo


class Command(BaseCommand):
    help = "Submit a realistic mix of jobs and run demo workers until stopped."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--gearman", default=settings.HQ_GEARMAN,
                            help="HOST:PORT clients use, or a list NAME=HOST:PORT,... to "
                                 "spread the work over (default: HQ_GEARMAN, every server)")
        parser.add_argument("--rate", type=float, default=8.0, help="jobs per second")
        parser.add_argument("--duration", type=float, default=0,
                            help="seconds to run (0 = until Ctrl-C)")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["rate"] <= 0:
            raise CommandError("--rate must be positive")
        try:
            servers = parse_servers(opts["gearman"], settings.HQ_SERVER_NAME)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if not servers:
            raise CommandError("--gearman names no server")
        where = ", ".join(f"{s.host}:{s.port}" for s in servers)
        self.stderr.write(f"demo workload on {where} at ~{opts['rate']} jobs/s "
                          "(Ctrl-C to stop)")
        try:
            n = asyncio.run(run_demo([(s.host, s.port) for s in servers], opts["rate"],
                                     opts["duration"]))
        except KeyboardInterrupt:
            return
        self.stderr.write(f"demo submitted {n} jobs")
