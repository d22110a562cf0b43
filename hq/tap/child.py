"""The proxy's tap child: parses, tracks and ingests what the forwarding process sends.

Started by the proxy's :class:`~hq.tap.supervise.ChildSupervisor` as a fresh interpreter
(``python -m hq.tap.child --fd N ...``) that inherits only the read end of the pipe. It ends
when the proxy closes the pipe, after flushing every event (exit status 0). Should one of
its threads die, it stops reading, keeps what it holds in the spool and exits with
status 70 (``hq/tap/threads.py``); the proxy then starts a new child.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from .threads import EXIT_THREAD_DIED

log = logging.getLogger("hq.tap")


class _ThreadDied(Exception):
    """Raised in the main thread (by a signal) to stop reading the pipe."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise _ThreadDied


def run(read_fd: int, server: str, upstream: tuple[str, int], incarnation: int = 0) -> int:
    """Replay the pipe into a tap until it ends; the process's exit status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the proxy decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from broker.pipe import replay
    from hq.tap.runner import TapRunner

    runner = TapRunner(server, upstream)
    runner.extra_stats["child"] = {"incarnation": incarnation, "pid": os.getpid()}
    main = threading.main_thread().ident
    assert main is not None
    signal.signal(signal.SIGUSR1, _interrupt)
    runner.watch.on_death = lambda why: signal.pthread_kill(main, signal.SIGUSR1)
    runner.start()
    try:
        count = replay(read_fd, runner.sink)
        log.info("proxy tap child replayed %d callbacks", count)
    except _ThreadDied:
        log.error("proxy tap child stops reading: a %s", runner.watch.dead)
    finally:
        runner.stop()
    return EXIT_THREAD_DIED if runner.watch.dead else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hq.tap.child")
    parser.add_argument("--fd", type=int, required=True, help="read end of the proxy's pipe")
    parser.add_argument("--server", required=True)
    parser.add_argument("--upstream", required=True, help="gearmand HOST:PORT")
    parser.add_argument("--incarnation", type=int, default=0, help="restarts before this one")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hq.settings")
    import django

    django.setup()
    sys.exit(run(args.fd, args.server, (host, int(port)), args.incarnation))


if __name__ == "__main__":
    main()
