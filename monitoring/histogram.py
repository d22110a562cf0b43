"""Fixed log-scale histograms for runtimes and waits (milliseconds).

Bucket 0 holds values below 1 ms; bucket ``i >= 1`` holds ``[2**((i-1)/4), 2**(i/4))`` ms,
four buckets per doubling, up to bucket ``SIZE - 1`` which also takes everything larger
(2**27 ms ≈ 37 hours). Because the edges are fixed, histograms of different minutes add
element by element, and a percentile read from the sum is off by less than one bucket's
width (about 19 %) from the exact value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

PER_DOUBLING = 4
SIZE = 1 + 27 * PER_DOUBLING

#: the same bucketing in SQL, for rollups computed in the database: in double precision
#: (a ``numeric`` logarithm cost ~15 µs a row, 15× more); the 1e-9 puts a value that is
#: exactly a bucket's edge (8 ms) in the bucket ``bucket`` gives it despite rounding
SQL_BUCKET = (
    "CASE WHEN {col} < 1 THEN 0 ELSE least({last}, "
    "1 + floor(ln({col}::float8) * {per_ln!r} + 1e-9))::int END"
)


def sql_bucket(column: str) -> str:
    return SQL_BUCKET.format(col=column, last=SIZE - 1, per_ln=PER_DOUBLING / math.log(2))


def bucket(ms: float) -> int:
    if ms < 1:
        return 0
    return min(SIZE - 1, 1 + math.floor(PER_DOUBLING * math.log2(ms)))


def upper_edge(index: int) -> float:
    return 1.0 if index == 0 else 2 ** (index / PER_DOUBLING)


def lower_edge(index: int) -> float:
    return 0.0 if index == 0 else 2 ** ((index - 1) / PER_DOUBLING)


def empty() -> list[int]:
    return [0] * SIZE


def add(into: list[int], other: Sequence[int]) -> list[int]:
    for i, n in enumerate(other):
        if n:
            into[i] += n
    return into


def merge(hists: Iterable[Sequence[int]]) -> list[int]:
    total = empty()
    for h in hists:
        add(total, h)
    return total


def percentile(hist: Sequence[int], p: float) -> float | None:
    """The ``p``-th percentile (0 to 100): the geometric middle of the bucket holding it."""
    count = sum(hist)
    if count == 0:
        return None
    rank = max(1, math.ceil(count * p / 100))
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= rank:
            if i == 0:
                return 0.5
            return math.sqrt(lower_edge(i) * upper_edge(i))
    return upper_edge(SIZE - 1)


def from_values(values: Iterable[float]) -> list[int]:
    hist = empty()
    for v in values:
        hist[bucket(v)] += 1
    return hist
