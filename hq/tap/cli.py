"""``hq-tap``: the tap on its own, for a host that runs only gearmand.

    hq-tap capture --server gm1 [--interface eth0] [--port 4730] ...
    hq-tap proxy   --server gm1 [--listen 0.0.0.0:4730] [--upstream 127.0.0.1:4731] ...

A console script (pyproject.toml ``[project.scripts]``) around the two tap commands
(``manage.py gearman_capture`` / ``gearman_proxy``, whose options it keeps): the same code,
started without ``manage.py`` and with only the settings a tap uses. ``DATABASE_URL`` is
required; ``REDIS_URL`` carries live updates and the tap's health to the web UI.
``HQ_SECRET_KEY`` is not needed (a tap signs nothing). Before Django starts, it checks what a
first install gets wrong and says so in one line: no ``DATABASE_URL``, a spool directory
this user cannot write, no capture rights (CAP_NET_RAW), a missing ``--server``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

MODES = ("capture", "proxy")
EXIT_USAGE = 2

DESCRIPTION = """\
Record every job of one gearmand into Gearman HQ's Postgres. Run it on the gearmand host:

  capture  tcpdump copies gearmand's traffic; HQ is not in the job path at all.
           Needs CAP_NET_RAW (root, or AmbientCapabilities=CAP_NET_RAW in systemd).
  proxy    clients connect to the tap, which forwards every byte to gearmand.
           Needs no privilege.

hq-tap MODE --help lists the options of each mode."""

ENVIRONMENT = """\
environment:
  DATABASE_URL   (required) HQ's Postgres, postgres://USER:PASSWORD@HOST:5432/gearman_hq
  REDIS_URL      HQ's Redis, for live updates and the tap's health on /metrics
                 (without it the jobs are still recorded; the default is redis://127.0.0.1:6379/0)
  HQ_SPOOL_DIR   where events wait while Postgres is unreachable; writable by this user
  HQ_SERVER_NAME default for --server
  HQ_LOG_LEVEL, HQ_PAYLOAD_MAX, HQ_INGEST_*: see the README's Settings table

example: deploy/hq-tap@.service (systemd, non-root with CAP_NET_RAW)"""


class UsageError(Exception):
    """Bad input: printed as ``hq-tap: error: …`` with exit status 2."""


def top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hq-tap", description=DESCRIPTION, epilog=ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=MODES, help="capture or proxy")
    return parser


def check_environment(env: Mapping[str, str]) -> str | None:
    """What is wrong with the environment, before Django reads it (None when nothing)."""
    url = env.get("DATABASE_URL", "")
    if not url:
        return ("DATABASE_URL is not set: the tap writes to HQ's Postgres, e.g. "
                "DATABASE_URL=postgres://hq:PASSWORD@db.example:5432/gearman_hq")
    if not url.startswith(("postgres://", "postgresql://")):
        return f"DATABASE_URL must be a postgres:// URL, got {url!r}"
    return None


def check_spool(spool: Path) -> str | None:
    """Why the spool directory cannot be used by this user (None when it can)."""
    try:
        spool.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=spool):
            pass
    except OSError as exc:
        return (f"the spool directory {spool} is not writable by uid {os.geteuid()} "
                f"({exc.strerror}): set HQ_SPOOL_DIR to a directory this user owns "
                "(the systemd unit uses StateDirectory=, i.e. /var/lib/hq-tap)")
    return None


def check_capture(interface: str) -> str | None:
    from broker.tcpdump import capture_allowed

    if interface != "any" and not Path("/sys/class/net", interface).exists():
        names = sorted(p.name for p in Path("/sys/class/net").glob("*"))
        return (f"no interface {interface!r} on this host: --interface is the one gearmand's "
                f"clients reach it on ({', '.join(names)}, or any)")
    if capture_allowed(interface=interface):
        return None
    return (f"cannot capture on {interface!r} as uid {os.geteuid()}: tcpdump is missing or "
            "this process lacks CAP_NET_RAW. Install tcpdump and run as root or with the "
            "capability (systemd: AmbientCapabilities=CAP_NET_RAW, see "
            "deploy/hq-tap@.service), or use `hq-tap proxy`, which needs no privilege")


def peek(mode: str, rest: Sequence[str]) -> argparse.Namespace:
    """The options preflight checks, read as the command's own parser will read them
    (``--server=X``, ``--serv X``); the command parses everything again."""
    parser = argparse.ArgumentParser(prog=f"hq-tap {mode}", add_help=False)
    parser.add_argument("--server", default=os.environ.get("HQ_SERVER_NAME", ""))
    parser.add_argument("--interface", default="lo")
    return parser.parse_known_args(rest)[0]


def wants_help(argv: Sequence[str]) -> bool:
    return any(arg in ("-h", "--help") for arg in argv)


def preflight(mode: str, rest: Sequence[str]) -> None:
    """What a first install gets wrong, before anything starts (raises UsageError)."""
    seen = peek(mode, rest)
    if not seen.server:
        raise UsageError("--server NAME is required: the name this gearmand has in HQ "
                         "(one per gearmand, e.g. the host name)")
    from django.conf import settings

    spool_problem = check_spool(Path(settings.HQ_SPOOL_DIR))
    if spool_problem:
        raise UsageError(spool_problem)
    if mode == "capture":
        capture_problem = check_capture(seen.interface)
        if capture_problem:
            raise UsageError(capture_problem)
    if not os.environ.get("REDIS_URL"):
        sys.stderr.write("hq-tap: REDIS_URL is not set: jobs are recorded, but live updates "
                         f"and the tap's health go to {settings.REDIS_URL}\n")


class _Help(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of the environment list under a mode's --help."""


def tap_command(mode: str) -> BaseCommand:
    """The management command of ``mode``, shown as ``hq-tap MODE`` with only its own
    options (Django's --settings, --pythonpath... make no sense here)."""
    from hq.management.commands import gearman_capture, gearman_proxy

    class Standalone(BaseCommand):
        suppressed_base_arguments = {"--version", "--settings", "--pythonpath", "--no-color",
                                     "--force-color", "--skip-checks", "--verbosity"}
        requires_system_checks: list[str] = []  # the web's checks (URLs, templates)

        def create_parser(self, prog_name: str, subcommand: str,
                          **kwargs: Any) -> CommandParser:
            parser = super().create_parser(prog_name, subcommand, epilog=ENVIRONMENT, **kwargs)
            parser.formatter_class = _Help
            return parser

    class Capture(Standalone, gearman_capture.Command):
        pass

    class Proxy(Standalone, gearman_proxy.Command):
        pass

    return Capture() if mode == "capture" else Proxy()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = top_parser()
    if not args or args[0] not in MODES:
        parser.parse_args(args[:1])  # --help, or "invalid choice" (exit 2)
        parser.error("give the mode first: hq-tap capture|proxy [OPTIONS]")
    mode, rest = args[0], args[1:]
    if os.environ.get("DJANGO_SETTINGS_MODULE", "hq.settings") == "hq.settings":
        # the same settings without the web's apps (importing hq has set hq.settings as
        # the default already; a settings module of the operator's own is kept)
        os.environ["DJANGO_SETTINGS_MODULE"] = "hq.tap.settings"
    try:
        problem = None if wants_help(rest) else check_environment(os.environ)
        if problem:
            raise UsageError(problem)
        import django

        django.setup()
        if not wants_help(rest):
            preflight(mode, rest)
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"hq-tap {mode}: error: {exc}\n")
    command = tap_command(mode)
    command.run_from_argv(["hq-tap", mode, *rest])  # exits non-zero on a CommandError
    return 0


if __name__ == "__main__":
    sys.exit(main())
