"""A warning said at most every so often: the live stream and the tap reports must go on
when Redis is away, and a loop that fails on every pass would otherwise fill the log."""

from __future__ import annotations

import logging
import time


class SeldomWarning:
    """``warn(msg, *args)`` logs a warning on ``log``, then nothing more for ``every_s``
    seconds (what comes meanwhile is dropped)."""

    __slots__ = ("_last", "every_s", "log")

    def __init__(self, log: logging.Logger, every_s: float = 30.0) -> None:
        self.log, self.every_s, self._last = log, every_s, 0.0

    def __call__(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.log.warning(msg, *args)
