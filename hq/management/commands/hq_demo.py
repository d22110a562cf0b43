"""Run the demo workload against gearmand (see hq/demo.py)."""

import asyncio
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from broker.admin import parse_address
from hq.demo import run_demo


class Command(BaseCommand):
    help = "Submit a realistic mix of jobs and run demo workers until stopped."

    def add_arguments(self, parser: CommandParser) -> None:
        first = settings.HQ_GEARMAN_SERVERS[0]  # HQ_GEARMAN may be a list
        parser.add_argument("--gearman", default=f"{first.host}:{first.port}",
                            help="HOST:PORT clients use (default: the first of HQ_GEARMAN)")
        parser.add_argument("--rate", type=float, default=8.0, help="jobs per second")
        parser.add_argument("--duration", type=float, default=0,
                            help="seconds to run (0 = until Ctrl-C)")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["rate"] <= 0:
            raise CommandError("--rate must be positive")
        host, port = parse_address(opts["gearman"])
        self.stderr.write(f"demo workload on {host}:{port} at ~{opts['rate']} jobs/s "
                          "(Ctrl-C to stop)")
        try:
            n = asyncio.run(run_demo(host, port, opts["rate"], opts["duration"]))
        except KeyboardInterrupt:
            return
        self.stderr.write(f"demo submitted {n} jobs")
