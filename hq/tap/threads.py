"""A tap's threads are its process: when one dies, the process must end.

Every long-running thread of a tap (the event writer, the boot watch/poller, the stats
reporter; in the proxy, the child supervisor) catches what it can per iteration. Should
one die anyway, carrying on would record nothing while looking alive, so
:class:`ThreadWatch` notices — through ``threading.excepthook`` at once, and by checking
``is_alive()`` every second for threads that end without an exception — logs which thread
and why, and calls ``on_death``: the command then stops its byte source and exits with
:data:`EXIT_THREAD_DIED`, and its supervisor (systemd, ``make run``, the proxy for its
decoding child) starts it again.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable

log = logging.getLogger("hq.tap")

#: exit status of a tap whose thread died (EX_SOFTWARE)
EXIT_THREAD_DIED = 70
CHECK_EVERY_S = 1.0


class ThreadWatch:
    def __init__(self, on_death: Callable[[str], None] | None = None) -> None:
        self.on_death = on_death
        self.dead = ""  # what died, and why; empty while all live
        self.died = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._installed = False

    def install(self) -> None:
        """Hook ``threading.excepthook`` and start checking (once per process)."""
        if self._installed:
            return
        self._installed = True
        previous = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            thread = args.thread
            if thread is None or self._threads.get(thread.name) is not thread:
                previous(args)
                return
            text = "".join(traceback.format_exception(
                args.exc_type, args.exc_value, args.exc_traceback))
            log.critical("tap thread %r died:\n%s", thread.name, text.rstrip())
            self._record(thread.name, f"{args.exc_type.__name__}: {args.exc_value}")

        threading.excepthook = hook
        threading.Thread(target=self._check, name="hq-thread-watch", daemon=True).start()

    def watch(self, thread: threading.Thread | None) -> None:
        if thread is not None:
            self._threads[thread.name] = thread

    def spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self.watch(thread)
        thread.start()
        return thread

    def stopping(self) -> None:
        """From now on threads end on purpose: not a death."""
        self._stopping.set()

    def _check(self) -> None:
        while not self._stopping.wait(CHECK_EVERY_S):
            for name, thread in list(self._threads.items()):
                if not thread.is_alive():
                    self._record(name, "it ended")

    def _record(self, name: str, why: str) -> None:
        with self._lock:
            if self.dead or self._stopping.is_set():
                return
            self.dead = f"thread {name} died ({why})"[:300]
        log.critical("%s: the tap stops and exits with status %d so that its supervisor "
                     "restarts it", self.dead, EXIT_THREAD_DIED)
        self.died.set()
        if self.on_death is not None:
            try:
                self.on_death(self.dead)
            except Exception:
                log.exception("stopping after a thread died failed")
