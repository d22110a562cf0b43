"""Nagios/Icinga plugin: ``manage.py hq_check --function F --metric queue_depth
--warning 100 --critical 500`` prints one status line with perfdata and exits 0/1/2/3."""

import sys
from typing import Any, NoReturn

from django.core.management.base import BaseCommand, CommandParser

from alerts.check import UNKNOWN, check


class Command(BaseCommand):
    help = "Check one HQ metric like a Nagios plugin (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--function", default="*",
                            help="function name or glob (per-server metrics such as "
                                 "server_down and tap_health ignore it)")
        parser.add_argument("--metric", default="queue_depth")
        parser.add_argument("--warning", type=float, required=True)
        parser.add_argument("--critical", type=float, required=True)
        parser.add_argument("--below", action="store_true",
                            help="lower is worse (e.g. workers)")
        parser.add_argument("--window", type=int, default=300,
                            help="seconds, for failure_rate, runtime_p95, drain_time, "
                                 "time_to_complete_p95, dead_letters")
        parser.add_argument("--server", default=None)

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        """Bad arguments are UNKNOWN (3) to Nagios, not argparse's 2 (CRITICAL)."""
        parser = super().create_parser(prog_name, subcommand, **kwargs)

        def error(message: str) -> NoReturn:
            parser.print_usage(sys.stderr)
            self.stdout.write(f"HQ UNKNOWN - bad arguments: {message}")
            sys.exit(UNKNOWN)

        # argparse has no hook for a usage error's exit code: replace this parser's method
        parser.error = error  # type: ignore[method-assign]
        return parser

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            result = check(opts["function"], opts["metric"], opts["warning"], opts["critical"],
                           below=opts["below"], window=opts["window"], server=opts["server"])
        except Exception as exc:  # a plugin must answer UNKNOWN, never a traceback
            message = " ".join(str(exc).split())  # one line, as Nagios reads it
            self.stdout.write(f"HQ UNKNOWN - {exc.__class__.__name__}: {message}")
            sys.exit(UNKNOWN)
        self.stdout.write(result.line)
        sys.exit(result.code)
