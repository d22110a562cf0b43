"""Pairing admin commands with gearmand's replies on one connection, to see cancels succeed.

gearmand answers every admin line, in order: one line (``OK …`` / ``ERR …``) for most
commands, or lines up to a ``.`` for ``status``, ``workers``, ``prioritystatus``,
``show jobs`` and ``show unique jobs``. Its parser (measured on 1.1.20): the line ends at
the first NUL, words are separated by spaces (a run counts as one, a leading space makes an
unknown command), command words are case-insensitive, and an empty line gets an ``ERR``.

A ``cancel job H`` is only confirmed by the ``OK`` that answers *that* command, never by an
``OK`` that answers another one or that a peer sent itself: commands are read from the
peer's direction, replies from gearmand's, and every command holds its place in the queue.
When the queue cannot be trusted (bytes lost, or more than ``ADMIN_PENDING_MAX`` commands
outstanding) the connection is *blind*: its replies confirm nothing from then on.
"""

from __future__ import annotations

from collections import deque

from .limits import ADMIN_PENDING_MAX

SINGLE = 0  # a command answered by one line
MULTI = 1  # a command answered by lines up to "."
#: a handle longer than this cannot be one HQ follows (job handles are a few dozen bytes)
CANCEL_HANDLE_MAX = 1024
_MULTI_WORDS = frozenset({b"status", b"workers", b"prioritystatus"})
_SHOW = ((b"jobs",), (b"unique", b"jobs"))

Entry = int | bytes  # SINGLE, MULTI, or the handle of a cancel job


def classify(text: bytes) -> Entry:
    """What reply a command line gets, as gearmand parses it."""
    if text[:1] == b" ":
        return SINGLE
    words = [w.lower() for w in text.split(b"\0", 1)[0].split(b" ") if w]
    if not words:
        return SINGLE
    first = words[0]
    if first in _MULTI_WORDS or (first == b"show" and tuple(words[1:]) in _SHOW):
        return MULTI
    if first == b"cancel" and len(words) == 3 and words[1] == b"job":
        handle = [w for w in text.split(b"\0", 1)[0].split(b" ") if w][2]
        return handle if len(handle) <= CANCEL_HANDLE_MAX else SINGLE
    return SINGLE


def looks_like_reply(text: bytes) -> bool:
    """For callers that do not say the direction: gearmand's single-line reply shapes."""
    return text == b"." or text.startswith((b"OK", b"ERR"))


class AdminWatch:
    """The admin commands of one connection that still await their reply."""

    __slots__ = ("blind", "queue")

    def __init__(self) -> None:
        self.queue: deque[Entry] = deque()
        self.blind = False

    def command(self, text: bytes) -> bool:
        """A command line from the peer. False when it made the queue overflow."""
        if self.blind:
            return True
        if len(self.queue) >= ADMIN_PENDING_MAX:
            self.lost()
            return False
        self.queue.append(classify(text))
        return True

    def reply(self, text: bytes) -> bytes | None:
        """A reply line from gearmand; the handle of a cancel it confirms, if it does."""
        if self.blind or not self.queue:
            return None
        front = self.queue[0]
        if front == MULTI:
            if text == b".":
                self.queue.popleft()
            return None
        self.queue.popleft()
        if isinstance(front, bytes) and text == b"OK":
            return front
        return None

    def lost(self) -> None:
        """Bytes of the connection were lost: replies can no longer be paired."""
        self.queue.clear()
        self.blind = True
