"""Running the proxy until SIGTERM/SIGINT: in this process, or in several that share the
listening port (SO_REUSEPORT), each with its own event loop (uvloop when installed) and
its own sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from broker import gcpolicy
from broker.proxy import Address, Proxy
from broker.shippers import ShipMode
from broker.stream import StreamSink


def install_uvloop() -> bool:
    """Use uvloop when available: it roughly halves the per-chunk cost of the loop."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def _serve_one(
    listen: Address, upstream: Address, sink_factory: Callable[[], StreamSink],
    reuse_port: bool, ship: ShipMode,
) -> None:
    """One process: its own loop, its own sink, its own listening socket."""
    install_uvloop()
    proxy = Proxy(listen, upstream, sink_factory(), reuse_port=reuse_port, ship=ship)
    gcpolicy.for_hot_loop()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await proxy.serve_forever()

    asyncio.run(main())


def run_proxy(
    listen: Address,
    upstream: Address,
    sink_factory: Callable[[], StreamSink],
    workers: int = 1,
    *,
    ship: ShipMode = "inline",
) -> None:
    """Run the proxy until SIGTERM/SIGINT, in this process or in ``workers`` processes.

    With ``workers > 1`` each process binds ``listen`` with SO_REUSEPORT and the kernel
    spreads new connections across them. Every process calls ``sink_factory`` for its own
    sink, so each has its own tracker: that is correct because a TCP connection (and so a
    Gearman client's whole conversation) always stays in the one process that accepted
    it, and the tracker only correlates packets within a connection and with gearmand's
    handles, which are unique per server.
    """
    if workers <= 1:
        _serve_one(listen, upstream, sink_factory, False, ship)
        return
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_serve_one, args=(listen, upstream, sink_factory, True, ship),
                    name=f"hq-proxy-{i}", daemon=True)
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    _wait_children(procs)


def _wait_children(procs: list[Any]) -> None:
    """Forward SIGTERM/SIGINT to the children and wait; if one dies, stop them all."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set() and all(p.is_alive() for p in procs):
        stop.wait(0.5)
    for p in procs:
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        p.join(5)
