"""Keep a tap's resident memory near what it holds, not at its peaks (issue 13's < 100 MB:
``bench/tap_memory.py``).

A tap's threads (capture, writer, poller, workers) allocate through glibc's malloc, which
gives each thread that meets contention an arena of its own (up to 8 × cores) and returns
freed pages to the kernel only from the top of a heap. Bursts (100,000 jobs submitted at
once, a reconciliation's ``show jobs`` list) leave their pages resident for ever.
:func:`limit_arenas` caps the arenas before the threads start; :func:`trim` gives free
pages back after a burst. Both are no-ops where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("hq.tap")

#: mallopt's M_ARENA_MAX (glibc's malloc.h)
M_ARENA_MAX = -8
#: two arenas: the hot loop's thread and the writer's rarely wait for each other's
ARENAS = 2

_libc: ctypes.CDLL | None = None


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name or "libc.so.6")
            libc.mallopt  # noqa: B018  (AttributeError: not glibc)
            libc.malloc_trim  # noqa: B018
        except (OSError, AttributeError):
            return None
        _libc = libc
    return _libc


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before starting threads); whether it took."""
    libc = _glibc()
    ok = libc is not None and libc.mallopt(M_ARENA_MAX, arenas) == 1
    if not ok:
        log.debug("malloc arenas not capped (not glibc)")
    return ok


def trim() -> bool:
    """Return the free pages of every arena to the kernel; whether any was returned."""
    libc = _glibc()
    return libc is not None and libc.malloc_trim(0) == 1
