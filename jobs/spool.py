"""A disk spool for event batches the database could not take.

Each batch is one file, named by a zero-padded sequence number so the directory lists in
arrival order; a file is written to a temporary name and renamed, so a crash never leaves
half a batch. Batches are replayed oldest first and deleted only after their transaction
committed. Event ids are fixed before spooling, so a batch replayed twice inserts nothing
twice.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class Spool(Generic[T]):
    """Batches of type ``T`` (pickled), oldest first."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        names = self._names()
        self._next = int(names[-1].split(".")[0]) + 1 if names else 0

    def _names(self) -> list[str]:
        return sorted(n for n in os.listdir(self.dir) if n.endswith(".batch"))

    def __len__(self) -> int:
        return len(self._names())

    def size_bytes(self) -> int:
        return sum((self.dir / n).stat().st_size for n in self._names())

    def put(self, batch: T) -> None:
        name = f"{self._next:012d}.batch"
        self._next += 1
        tmp = self.dir / (name + ".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(batch, fh, protocol=pickle.HIGHEST_PROTOCOL)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / name)

    def oldest(self) -> tuple[str, T] | None:
        names = self._names()
        if not names:
            return None
        with open(self.dir / names[0], "rb") as fh:
            batch: T = pickle.load(fh)  # our own files, written by put()
        return names[0], batch

    def remove(self, name: str) -> None:
        (self.dir / name).unlink(missing_ok=True)
