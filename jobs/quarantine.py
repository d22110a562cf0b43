"""The dead-letter file of the ingest writer: what Postgres refused, kept for a person.

A row the database rejects for its *data* (a NUL in a handle, a function longer than its
column, a number past ``bigint``) must not stop the rows around it, nor be retried forever.
The writer isolates it (``jobs/batches.py``) and hands it here: one JSON line per row in
``<spool>/<server>/quarantine/events-<UTC day>.jsonl``, with the error text and the batch
it came from. Bytes are written as ``{"$b64": ...}``, times as ISO 8601, ids as text.
A spool file that cannot even be read back is moved into the same folder as
``<name>.corrupt``.

The folder is bounded (``HQ_QUARANTINE_MAX`` bytes): past it rows are still counted, and
logged once, but no longer written, so a stream of bad values cannot fill the disk.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, is_dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

log = logging.getLogger(__name__)

FOLDER = "quarantine"


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def as_record(item: object) -> dict[str, Any]:
    """A row or event (a dataclass, or anything with ``__slots__``) as JSON-able fields."""
    if is_dataclass(item) and not isinstance(item, type):
        fields = asdict(item)
    else:
        names = getattr(item, "__slots__", None) or getattr(item, "__dict__", {})
        fields = {n: getattr(item, n, None) for n in names}
    return {k: _plain(v) for k, v in fields.items()}


class Quarantine:
    """Appends rejected rows to JSON-lines files under ``directory``; thread-safe."""

    def __init__(self, directory: Path, *, max_bytes: int = 256 << 20) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._bytes = self._measure()
        self._full_logged = False
        self.counters = {"quarantined_events": 0, "quarantine_not_written": 0,
                         "corrupt_spool_files": 0, "last_quarantine_at": 0.0}

    def _measure(self) -> int:
        if not self.dir.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.dir.iterdir() if p.is_file())

    def size_bytes(self) -> int:
        return self._bytes

    def add(self, items: Iterable[object], *, error: str, batch: str = "",
            kind: str = "row") -> int:
        """Quarantine ``items`` (event rows, or raw tracker events when ``kind="event"``)
        with the ``error`` that refused them. Returns how many were counted."""
        now = datetime.now(UTC)
        lines = []
        for item in items:
            record: Mapping[str, Any] = {
                "quarantined_at": now.isoformat(), "batch": batch, "error": error[:2000],
                kind: as_record(item)}
            lines.append(json.dumps(record, ensure_ascii=True, default=str) + "\n")
        if not lines:
            return 0
        with self._lock:
            self.counters["quarantined_events"] += len(lines)
            self.counters["last_quarantine_at"] = time.time()
            self._write(now, "".join(lines), len(lines))
        return len(lines)

    def _write(self, now: datetime, text: str, count: int) -> None:
        data = text.encode("ascii")
        if self.max_bytes and self._bytes + len(data) > self.max_bytes:
            self.counters["quarantine_not_written"] += count
            if not self._full_logged:
                self._full_logged = True
                log.error("quarantine folder %s is full (HQ_QUARANTINE_MAX=%d bytes): rejected "
                          "rows are counted but no longer written", self.dir, self.max_bytes)
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self.dir / f"events-{now:%Y%m%d}.jsonl"
            with open(path, "ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            self.counters["quarantine_not_written"] += count
            log.error("could not write %d quarantined rows to %s: %s", count, self.dir, exc)
            return
        self._bytes += len(data)

    def corrupt_file(self, path: Path) -> None:
        """Count a spool file the caller moved into this folder."""
        with self._lock:
            self.counters["corrupt_spool_files"] += 1
            self.counters["last_quarantine_at"] = time.time()
            with contextlib.suppress(OSError):
                self._bytes += path.stat().st_size
