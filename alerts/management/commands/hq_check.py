"""Nagios/Icinga plugin: ``manage.py hq_check --function F --metric queue_depth
--warning 100 --critical 500`` prints one status line with perfdata and exits 0/1/2/3."""

import sys

from django.core.management.base import BaseCommand

from alerts.check import UNKNOWN, check


class Command(BaseCommand):
    help = "Check one HQ metric like a Nagios plugin (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--function", default="*", help="function name or glob")
        parser.add_argument("--metric", default="queue_depth")
        parser.add_argument("--warning", type=float, required=True)
        parser.add_argument("--critical", type=float, required=True)
        parser.add_argument("--below", action="store_true",
                            help="lower is worse (e.g. workers)")
        parser.add_argument("--window", type=int, default=300,
                            help="seconds, for failure_rate, runtime_p95, drain_time")
        parser.add_argument("--server", default=None)

    def create_parser(self, prog_name, subcommand, **kwargs):  # type: ignore[no-untyped-def]
        """Bad arguments are UNKNOWN (3) to Nagios, not argparse's 2 (CRITICAL)."""
        parser = super().create_parser(prog_name, subcommand, **kwargs)

        def error(message: str) -> None:
            parser.print_usage(sys.stderr)
            self.stdout.write(f"HQ UNKNOWN - bad arguments: {message}")
            sys.exit(UNKNOWN)

        parser.error = error  # type: ignore[method-assign]
        return parser

    def handle(self, *args, **opts):  # type: ignore[no-untyped-def]
        try:
            result = check(opts["function"], opts["metric"], opts["warning"], opts["critical"],
                           below=opts["below"], window=opts["window"], server=opts["server"])
        except Exception as exc:  # a plugin must answer UNKNOWN, never a traceback
            message = " ".join(str(exc).split())  # one line, as Nagios reads it
            self.stdout.write(f"HQ UNKNOWN - {exc.__class__.__name__}: {message}")
            sys.exit(UNKNOWN)
        self.stdout.write(result.line)
        sys.exit(result.code)
