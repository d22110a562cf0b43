"""Where an event becomes a row: the batch writer behind every tap.

The tap's hot loop only calls :meth:`EventWriter.emit` (a deque append). A writer thread
takes the queued events in batches and, in one transaction per batch:

1. records the batch's id in ``jobs_ingestbatch``; if it is there already, the batch was
   written before (a spooled batch replayed after a crash) and is skipped whole,
2. COPYs the events straight into the partitioned ``jobs_jobevent`` table,
3. folds them into one delta per job (``jobs/fold.py``), COPYs the deltas into a staging
   table and merges them into ``jobs_job`` with one statement
   (``jobs/sql/upsert_jobs.sql``).

The statements and COPYs are in ``jobs/store.py``, built from the models and the ``Delta``
dataclass; this module is the queue, the writer thread, the spool and the batches.

Idempotency is per batch rather than per event because a batch is the unit that commits,
spools and replays: that keeps the hot path a plain COPY (no per-row conflict check).

When Postgres cannot be reached the batch goes to a disk spool and the writer retries with
backoff; spooled batches are replayed in order before any newer one, so the job rows fold
events in the order they happened.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg

from broker.tracker import Event

from . import store
from .fold import EventRow, fold, split_bytes
from .spool import Spool

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Batch:
    """The unit that commits, spools and replays: its id makes a replay a no-op."""

    id: uuid.UUID
    rows: list[EventRow]


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class EventWriter:
    """Batches tracker events into Postgres; spools to disk when Postgres is away."""

    def __init__(
        self, server: str, conninfo: str, *, spool_dir: Path, batch: int = 5000,
        flush_ms: int = 200, address: str = "",
        on_commit: Callable[[list[store.Changed]], None] | None = None,
    ) -> None:
        self.server_name = server
        self.address = address
        self.conninfo = conninfo
        self.batch = batch
        self.flush_s = flush_ms / 1000
        self.spool: Spool[Batch] = Spool(spool_dir / server)
        # told (id, handle, function, state) of the jobs a batch changed, once committed
        self.on_commit = on_commit
        self._queue: deque[Event] = deque()
        self._prefix = uuid.uuid4().int >> 64 << 64
        self._seq = 0
        self._conn: psycopg.Connection[Any] | None = None
        self._server_id: int | None = None
        self._boots: dict[str, int] = {}
        self._partitions: set[date] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counters = {"events_in": 0, "events_written": 0, "duplicates": 0, "batches": 0,
                         "db_errors": 0, "spooled_batches": 0, "lag_ms": 0}

    # -- the tap side: cheap ------------------------------------------------------------

    def emit(self, event: Event) -> None:
        self._queue.append(event)
        if len(self._queue) >= self.batch:
            self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- the writer thread ----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hq-event-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Flush what is queued (to Postgres, or the spool) and stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._conn is not None:
            self._conn.close()

    def _run(self) -> None:
        backoff = 0.5
        while True:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            try:
                self.flush()
                backoff = 0.5
            except psycopg.Error as exc:
                self._db_down(exc)
                if stopping:
                    self._spool_queue()
                    return
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if stopping and not self._queue:
                return

    def flush(self) -> None:
        """Write spooled batches, then everything queued. Raises psycopg.Error."""
        self._replay_spool()
        while self._queue:
            batch = self._take()
            try:
                self._write(batch)
            except psycopg.Error:
                self.spool.put(batch)
                self.counters["spooled_batches"] += 1
                raise

    def _take(self) -> Batch:
        events = []
        queue = self._queue
        for _ in range(min(self.batch, len(queue))):
            events.append(queue.popleft())
        self.counters["events_in"] += len(events)
        return Batch(uuid.uuid4(), self._rows(events))

    def _spool_queue(self) -> None:
        while self._queue:
            self.spool.put(self._take())
            self.counters["spooled_batches"] += 1

    def _replay_spool(self) -> None:
        while True:
            item = self.spool.oldest()
            if item is None:
                return
            name, batch = item
            self._write(batch)
            self.spool.remove(name)
            log.info("replayed spooled batch %s (%d events)", name, len(batch.rows))

    def _db_down(self, exc: Exception) -> None:
        self.counters["db_errors"] += 1
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
        if self.counters["db_errors"] % 20 == 1:
            log.warning("Postgres unavailable (%s); spooling events to %s",
                        str(exc).strip(), self.spool.dir)

    # -- turning events into rows ---------------------------------------------------------

    def _rows(self, events: list[Event]) -> list[EventRow]:
        rows = []
        prefix = self._prefix
        seq = self._seq
        for ev in events:
            seq += 1
            text, raw = split_bytes(ev.data, ev.data is not None and ev.size > len(ev.data))
            rows.append(EventRow(
                uuid.UUID(int=prefix | seq), _ts(ev.ts), ev.boot, ev.handle, ev.kind, ev.conn,
                ev.worker or "", ev.numerator, ev.denominator, text, raw, ev.size,
                ev.detail or "", ev.function, ev.unique, ev.priority, ev.background,
                _ts(ev.epoch) if ev.epoch else None,
            ))
        self._seq = seq
        return rows

    # -- the database side ------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self.conninfo, autocommit=False)
            store.create_stage(conn)
            conn.commit()
            self._conn = conn
            self._server_id = None
            self._boots.clear()
        return self._conn

    def _write(self, batch: Batch) -> None:
        rows = batch.rows
        if not rows:
            return
        conn = self._connection()
        started = time.monotonic()
        with conn.transaction():
            server_id = self._server(conn)
            if not store.claim(conn, batch.id, server_id, len(rows)):
                self.counters["duplicates"] += len(rows)
                return
            boots = {token: self._boot(conn, server_id, token, rows)
                     for token in {r.boot for r in rows}}
            self._ensure_partitions(conn, rows)
            store.copy_events(conn, server_id, boots, rows)
            changed = store.upsert_jobs(conn, server_id, boots, fold(rows))
        if self.on_commit is not None:
            try:
                self.on_commit(changed)
            except Exception:  # a live-stream hiccup must never stop ingest
                log.exception("on_commit hook failed")
        self.counters["batches"] += 1
        self.counters["events_written"] += len(rows)
        self.counters["lag_ms"] = int((time.time() - rows[-1].at.timestamp()) * 1000)
        log.debug("batch of %d events in %.1f ms", len(rows),
                  (time.monotonic() - started) * 1000)

    def _server(self, conn: psycopg.Connection[Any]) -> int:
        if self._server_id is None:
            self._server_id = store.server_id(conn, self.server_name, self.address)
        return self._server_id

    def _boot(self, conn: psycopg.Connection[Any], server_id: int, token: str,
              rows: list[EventRow]) -> int:
        boot_id = self._boots.get(token)
        if boot_id is None:
            first = min(r.at for r in rows if r.boot == token)
            boot_id = self._boots[token] = store.boot_id(conn, server_id, token, first)
        return boot_id

    def _ensure_partitions(self, conn: psycopg.Connection[Any], rows: list[EventRow]) -> None:
        days = {r.at.date() for r in rows} - self._partitions
        for day in days:
            store.ensure_partition(conn, day)
            self._partitions.add(day)


def conninfo_from_settings() -> str:
    from django.conf import settings

    db: dict[str, Any] = settings.DATABASES["default"]
    return psycopg.conninfo.make_conninfo(
        dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"] or None,
        host=db["HOST"], port=db["PORT"], application_name="gearman-hq-ingest",
        options="-c timezone=UTC",
    )


