"""The proxy's tap child: parses, tracks and ingests what the forwarding process sends.

Forked before the proxy's event loop starts (so it inherits the pipe and nothing else of
interest); it ends when the proxy closes the pipe, after flushing every event.
"""

from __future__ import annotations

import logging
import os
import signal


def run(read_fd: int, write_fd: int, server: str, upstream: tuple[str, int]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the proxy decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.close(write_fd)  # ours would keep the pipe open: we must see its end
    from django.db import connections

    connections.close_all()  # never share the parent's database sockets
    from broker.pipe import replay
    from hq.tap.runner import TapRunner

    runner = TapRunner(server, upstream)
    runner.start()
    try:
        count = replay(read_fd, runner.sink)
        logging.getLogger("hq.tap").info("proxy tap child replayed %d callbacks", count)
    finally:
        runner.stop()
