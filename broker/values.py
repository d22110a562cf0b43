"""Wire values made storable: the strings, numbers and times a packet carries, bounded.

Every value an :class:`~broker.tracker.Event` carries passes through a :class:`Cleaner`
(limits in :mod:`broker.limits`). The common case (valid UTF-8, no NUL, short enough) is
returned as it is, at the cost of one decode. Otherwise the raw bytes keep their meaning in
a visible form rather than being dropped:

- a NUL byte and each byte that is not UTF-8 become ``\\x00``-style escapes (Postgres text
  cannot hold NUL);
- a value longer than its column is cut, ending with ``…`` and, for names, ``#`` and 8 hex
  digits of a digest of the whole raw value, so two long names that share a prefix stay
  two names;
- a handle that needed escaping also gets the digest (a handle names a job: two different
  raw handles must never become one).

Numbers outside Postgres ``bigint`` and epochs outside year 0–9999 become None. Each kind
of repair is counted in the counters dict the cleaner was given.
"""

from __future__ import annotations

import hashlib

from .limits import (
    CUT_MARK,
    DETAIL_MAX,
    DIGEST_HEX,
    EPOCH_MAX,
    EPOCH_MIN,
    HANDLE_MAX,
    INT8_MAX,
    INT8_MIN,
)

#: Counters a Cleaner adds to the dict it is given.
COUNTERS = ("values_cleaned", "bad_numbers", "bad_epochs")


def digest(raw: bytes) -> str:
    return hashlib.blake2b(raw, digest_size=DIGEST_HEX // 2).hexdigest()


def escape(raw: bytes, limit: int) -> tuple[str, bool]:
    """The first characters of ``raw`` as storable text: undecodable bytes and NUL escaped.
    Returns (text, cut) where ``cut`` says the text holds less than all of ``raw``; the text
    may be longer than ``limit`` (by a few characters), never much longer."""
    head = raw[: 4 * limit + 4]  # every character costs at most 4 bytes
    text = head.decode("utf-8", "backslashreplace").replace("\0", "\\x00")
    return text, len(head) < len(raw)


def storable(raw: bytes, limit: int, *, name: bool = True, tag_escaped: bool = False) -> str:
    """``raw`` as text of at most ``limit`` characters (see the module docstring)."""
    text, cut = escape(raw, limit)
    if cut or len(text) > limit:
        tail = CUT_MARK + (f"#{digest(raw)}" if name else "")
        return text[: max(0, limit - len(tail))] + tail
    if tag_escaped:
        tail = f"#{digest(raw)}"
        if len(text) + len(tail) > limit:
            tail = CUT_MARK + tail
            return text[: max(0, limit - len(tail))] + tail
        return text + tail
    return text


def note(text: str, limit: int = DETAIL_MAX) -> str:
    """A note HQ writes (``detail``), made storable: no NUL, at most ``limit`` characters."""
    if "\0" in text:
        text = text.replace("\0", "\\x00")
    if len(text) > limit:
        text = text[: limit - len(CUT_MARK)] + CUT_MARK
    return text


def parse_int8(raw: bytes) -> int | None:
    """A decimal integer in Postgres ``bigint`` range (ASCII digits, optional ``-``)."""
    digits = raw[1:] if raw[:1] == b"-" else raw
    if not digits.isdigit() or len(digits) > 19:  # bytes.isdigit: ASCII digits only
        return None
    value = int(raw)
    return value if INT8_MIN <= value <= INT8_MAX else None


class Cleaner:
    """Turns raw wire values into storable ones, counting every repair in ``counters``."""

    __slots__ = ("counters",)

    def __init__(self, counters: dict[str, int]) -> None:
        self.counters = counters
        for name in COUNTERS:
            counters.setdefault(name, 0)

    def name(self, raw: bytes, limit: int) -> str:
        """A function name, unique key, client id…: text of at most ``limit`` characters."""
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            pass
        else:
            if len(text) <= limit and "\0" not in text:
                return text
        self.counters["values_cleaned"] += 1
        return storable(raw, limit)

    def handle(self, raw: bytes) -> str:
        """A job handle: like :meth:`name`, and never two raw handles made one."""
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            pass
        else:
            if len(text) <= HANDLE_MAX and "\0" not in text:
                return text
        self.counters["values_cleaned"] += 1
        return storable(raw, HANDLE_MAX, tag_escaped=True)

    def int8(self, raw: bytes) -> int | None:
        """WORK_STATUS numerator/denominator: None (counted) when not a bigint."""
        if raw.isdigit() and len(raw) <= 18:
            return int(raw)
        value = parse_int8(raw)
        if value is None and raw:
            self.counters["bad_numbers"] += 1
        return value

    def epoch(self, raw: bytes) -> tuple[int | None, str]:
        """SUBMIT_JOB_EPOCH's time: (seconds, "") or (None, a note saying why it is gone)."""
        value = parse_int8(raw)
        if value is not None and EPOCH_MIN <= value <= EPOCH_MAX:
            return value, ""
        self.counters["bad_epochs"] += 1
        shown = storable(raw, 40, name=False)
        return None, f"epoch {shown!r} ignored: not a time in years 1970-9999"
