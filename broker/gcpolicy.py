"""The garbage collector's schedule for a process that runs a tap's hot loop.

A tap allocates a handful of objects for every packet (segments, packets, events, rows)
and frees nearly all of them by reference counting: they hold no cycles. CPython's default
schedule still starts a young-generation collection every 700 net allocations and a full
one whenever the long-lived objects grew by a quarter, each walking the containers it
covers: with a tracker following 100,000 jobs and a writer queue of events, that walking
was about a quarter of the tap's CPU (``bench/cost.py``: 124-140 → 86-105 µs a job).

:func:`for_hot_loop` freezes what start-up built (Django, settings, modules: never
collected again) and makes collections rarer. Cycles are still collected, later: at most
:data:`YOUNG` young objects wait for the next young collection.
"""

from __future__ import annotations

import gc

#: net allocations between young collections (CPython's default: 700)
YOUNG = 50_000
#: young collections per middle one, middle ones per full one (default: 10, 10)
MIDDLE, OLD = 20, 100


def for_hot_loop() -> tuple[int, int, int]:
    """Freeze start-up's objects and space collections out; returns the old thresholds."""
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, MIDDLE, OLD)
    return previous
