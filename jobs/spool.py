"""A disk spool for event batches the database could not take (yet).

Each batch is one file, named ``<seq>-<events>-<first event, epoch ms>.batch`` with a
zero-padded sequence number, so the directory lists in arrival order and the spool knows
how many events it holds and how old the oldest is without reading a file. A file is
written to a temporary name, fsynced and renamed, so a crash never leaves half a batch.
Batches are replayed oldest first and deleted only after their transaction committed.
Event ids are fixed before spooling, so a batch replayed twice inserts nothing twice.

The spool is bounded (``max_bytes``, ``HQ_SPOOL_MAX``): a batch that would pass the bound
makes room by dropping the *oldest* batches, which :meth:`Spool.put` returns so the writer
can count and log them. The newest batch is always kept, even alone over the bound. A full
disk is treated the same way: when a write fails for want of space, the oldest batches are
dropped one by one until the new one fits (the newest events are the ones worth keeping:
they are the state the outage ends in).

Only one writer uses a spool directory, so the listing is read once and then kept in
memory (appending and taking the oldest stay O(1) however many files an outage leaves).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")

#: ``<seq>.batch`` (older versions) or ``<seq>-<events>-<first_ms>.batch``
_NAME = re.compile(r"^(\d+)(?:-(\d+)-(\d+))?\.batch$")
#: write errors that mean "no room": make room by dropping the oldest batches
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class SpoolCorrupt(Exception):
    """A spooled file that cannot be read back (truncated, foreign, not a batch)."""

    def __init__(self, name: str, cause: BaseException) -> None:
        super().__init__(f"spool file {name} is unreadable: {cause.__class__.__name__}: {cause}")
        self.name = name


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    name: str
    size: int
    events: int  # 0 when unknown (a file from an older version)
    first_at: float  # epoch seconds of its first event; 0.0 when unknown


def _entry(name: str, size: int) -> Entry | None:
    m = _NAME.match(name)
    if m is None:
        return None
    events = int(m.group(2)) if m.group(2) else 0
    first_at = int(m.group(3)) / 1000 if m.group(3) else 0.0
    return Entry(int(m.group(1)), name, size, events, first_at)


class Spool(Generic[T]):
    """Batches of type ``T`` (pickled), oldest first, at most ``max_bytes`` (0: no bound)."""

    def __init__(self, directory: Path, *, max_bytes: int = 0) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.dir.mkdir(parents=True, exist_ok=True)
        self._entries: deque[Entry] = deque()
        self._bytes = 0
        self._events = 0
        for name in sorted(os.listdir(self.dir)):
            path = self.dir / name
            if name.endswith(".batch.tmp"):  # a crash mid-write: never renamed, never whole
                path.unlink(missing_ok=True)
                continue
            entry = _entry(name, path.stat().st_size) if path.is_file() else None
            if entry is not None:
                self._entries.append(entry)
                self._bytes += entry.size
                self._events += entry.events
        self._next = self._entries[-1].seq + 1 if self._entries else 0

    def __len__(self) -> int:
        return len(self._entries)

    def size_bytes(self) -> int:
        return self._bytes

    def events(self) -> int:
        """Events in the spooled batches (those of older-version files not counted)."""
        return self._events

    def oldest_at(self) -> float | None:
        """Epoch seconds of the oldest spooled event, when known. Safe to call from
        another thread (the stats thread) while the writer changes the spool."""
        try:
            return self._entries[0].first_at or None
        except IndexError:
            return None

    def put(self, batch: T, *, events: int = 0, first_at: float = 0.0) -> list[Entry]:
        """Write ``batch`` as the newest file; returns the oldest batches dropped to stay
        within ``max_bytes`` or to fit on a full disk (empty when nothing had to go).
        Raises ``OSError`` when the batch cannot be written even into an empty spool."""
        name = f"{self._next:012d}-{events}-{max(0, int(first_at * 1000))}.batch"
        self._next += 1
        dropped: list[Entry] = []
        while True:
            try:
                size = self._write(name, batch)
                break
            except OSError as exc:
                if exc.errno not in _DISK_FULL or not self._entries:
                    raise
                dropped.append(self._drop_oldest())
        try:
            dropped += self._make_room(size)
            os.replace(self.dir / (name + ".tmp"), self.dir / name)
        except BaseException:
            (self.dir / (name + ".tmp")).unlink(missing_ok=True)
            raise
        self._entries.append(Entry(self._next - 1, name, size, events, first_at))
        self._bytes += size
        self._events += events
        return dropped

    def _write(self, name: str, batch: T) -> int:
        """The batch in ``<name>.tmp``, on disk (fsynced); its size."""
        tmp = self.dir / (name + ".tmp")
        try:
            with open(tmp, "wb") as fh:
                pickle.dump(batch, fh, protocol=pickle.HIGHEST_PROTOCOL)
                fh.flush()
                os.fsync(fh.fileno())
                return fh.tell()
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _drop_oldest(self) -> Entry:
        entry = self._entries[0]
        self.remove(entry.name)
        return entry

    def _make_room(self, size: int) -> list[Entry]:
        dropped: list[Entry] = []
        if not self.max_bytes:
            return dropped
        while self._entries and self._bytes + size > self.max_bytes:
            dropped.append(self._drop_oldest())
        return dropped

    def oldest(self) -> tuple[str, T] | None:
        """The oldest batch and its name. Raises :class:`SpoolCorrupt` when its file cannot
        be read back (the caller moves it aside: see :meth:`move_aside`)."""
        if not self._entries:
            return None
        name = self._entries[0].name
        try:
            with open(self.dir / name, "rb") as fh:
                batch: T = pickle.load(fh)  # our own files, written by put()
        except FileNotFoundError:  # removed behind our back: forget it
            self._forget(name)
            return self.oldest()
        except Exception as exc:
            raise SpoolCorrupt(name, exc) from exc
        return name, batch

    def remove(self, name: str) -> None:
        (self.dir / name).unlink(missing_ok=True)
        self._forget(name)

    def move_aside(self, name: str, folder: Path) -> Path:
        """Take the file out of the spool into ``folder`` (as ``<name>.corrupt``)."""
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{name}.corrupt"
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.dir / name, target)
        self._forget(name)
        return target

    def _forget(self, name: str) -> None:
        for i, entry in enumerate(self._entries):
            if entry.name == name:
                del self._entries[i]
                self._bytes -= entry.size
                self._events -= entry.events
                return
