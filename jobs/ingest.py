"""Where an event becomes a row: the batch writer behind every tap.

The tap's hot loop only calls :meth:`EventWriter.emit` (a deque append). A writer thread
takes the queued events in batches and, in one transaction per batch:

1. records the batch's id in ``jobs_ingestbatch``; if it is there already, the batch was
   written before (a spooled batch replayed after a crash) and is skipped whole,
2. COPYs the events straight into the partitioned ``jobs_jobevent`` table,
3. folds them into one delta per job (``jobs/fold.py``), COPYs the deltas into a staging
   table and merges them into ``jobs_job`` with one statement
   (``jobs/sql/upsert_jobs.sql``).

The statements are in ``jobs/store.py``; one batch's transaction, and what is done with
rows Postgres refuses, in ``jobs/batches.py``; this module is the queue, the writer
thread and the spool. Idempotency is per batch rather than per event because a batch is
the unit that commits, spools and replays: that keeps the hot path a plain COPY.

Nothing stops the writer:

* rows Postgres refuses for their data are quarantined one by one, the others written
  (``jobs/batches.py``, ``jobs/quarantine.py``); a spool file that cannot be read is moved
  into the quarantine folder;
* while Postgres is away (or slow), queued events go to the disk spool in batch-sized
  files rather than wait in memory: at once when a write fails, and whenever more than
  ``queue_max`` events (20 batches), or more than ``queue_bytes_max`` (64 MiB, payloads
  included, estimated from the last batch), wait. Spooled batches are replayed in order
  before any newer one, so job rows fold events in the order they happened. The spool is bounded
  (``HQ_SPOOL_MAX``, and its disk): past it the oldest batches are dropped, counted and
  logged;
* any other error is logged and the writer carries on; only an error that repeats
  :data:`FAILURES_MAX` times in a row ends the thread, and the tap process then exits so
  its supervisor restarts it (``hq/tap/threads.py``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from broker.tracker import Event

from . import store
from .batches import TRANSIENT, Batch, BatchStore, error_text, rows_of
from .fold import EventRow
from .quarantine import FOLDER, Quarantine
from .spool import Spool, SpoolCorrupt

log = logging.getLogger(__name__)

#: unexpected errors in a row after which the writer thread gives up (and the tap exits)
FAILURES_MAX = 10
#: while Postgres is away, a partial batch waits at most this long before it is spooled
SPILL_PARTIAL_S = 1.0
#: the longest wait between two attempts to reach Postgres while it is away: a refused
#: connection costs nothing, and every second waited past its return is a second of
#: events that must go through the spool (or be lost, when the spool's disk is full)
BACKOFF_MAX_S = 1.0
#: the spool fill (of HQ_SPOOL_MAX) from which a warning is logged and reported
SPOOL_WARN = 0.8
#: while Postgres is up but the writer is behind (a burst), queued events stay in memory
#: up to this many batches and QUEUE_BYTES_MAX; past either, whole batches are spooled.
#: Spooling costs CPU (pickle, fsync, unpickle: ~10 % of the capture tap's CPU at full
#: speed when the bound was 4 batches), so the bound that matters is memory, in bytes.
QUEUE_BATCHES = 20
QUEUE_BYTES_MAX = 64 << 20
#: what a queued event holds besides its payload (the event, its strings), roughly
EVENT_BYTES = 300


class EventWriter:
    """Batches tracker events into Postgres; spools to disk when Postgres is away."""

    def __init__(
        self, server: str, conninfo: str, *, spool_dir: Path, batch: int = 5000,
        flush_ms: int = 200, address: str = "",
        on_commit: Callable[[list[store.Changed]], None] | None = None,
        spool_max: int = 0, queue_max: int | None = None, quarantine_max: int = 256 << 20,
        queue_bytes_max: int = QUEUE_BYTES_MAX,
    ) -> None:
        self.server_name = server
        self.batch = batch
        self.flush_s = flush_ms / 1000
        self.queue_max = queue_max or QUEUE_BATCHES * batch
        self.queue_bytes_max = queue_bytes_max
        self._event_bytes = float(EVENT_BYTES)  # per queued event, from the last batch
        self.spool: Spool[Batch] = Spool(spool_dir / server, max_bytes=spool_max)
        self.quarantine = Quarantine(spool_dir / server / FOLDER, max_bytes=quarantine_max)
        # on_commit: told (id, handle, function, state) of the jobs a batch changed
        self.store = BatchStore(server, address, conninfo, self.quarantine,
                                on_commit=on_commit)
        self._queue: deque[Event] = deque()
        self._prefix = uuid.uuid4().int >> 64 << 64
        self._seq = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = "new"
        self._down = False
        self._backoff = 0.5
        self._retry_at = 0.0
        self._last_spill = 0.0
        self._give_up_at: float | None = None
        self._spool_warned = False
        self._writing_since: float | None = None
        self.counters = {"events_in": 0, "events_written": 0, "duplicates": 0, "batches": 0,
                         "db_errors": 0, "spooled_batches": 0, "commit_lag_ms": 0,
                         "spool_dropped_events": 0, "lost_events": 0, "writer_errors": 0}

    # -- the tap side: cheap ------------------------------------------------------------

    def emit(self, event: Event) -> None:
        self._queue.append(event)
        # a full batch wakes the writer; once it is awake, Event.set (a lock and a
        # notify in Python) is not paid again for every event while it writes
        if len(self._queue) >= self.batch and not self._wake.is_set():
            self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def stats(self) -> dict[str, Any]:
        """Counters and health for the tap's stats (safe from any thread)."""
        spool = self.spool
        return {
            **self.counters, **self.quarantine.counters,
            "state": self._state, "writer_alive": self._state == "running",
            "db_up": not self._down, "queued": len(self._queue),
            "queue_events": len(self._queue), "queue_max": self.queue_max,
            "queue_bytes_est": int(len(self._queue) * self._event_bytes),
            "spool_batches": len(spool), "spool_events": spool.events(),
            "spool_bytes": spool.size_bytes(), "spool_max": spool.max_bytes,
            "lag_ms": self.lag_ms(),
        }

    def pending_since(self) -> float | None:
        """Capture time of the oldest event not yet committed (spooled, being written or
        queued); None when every event handed to the writer is in Postgres."""
        times = [t for t in (self.spool.oldest_at(), self._writing_since) if t is not None]
        with contextlib.suppress(IndexError):  # the writer may empty it meanwhile
            times.append(self._queue[0].ts)
        return min(times, default=None)

    def lag_ms(self) -> int:
        """Age of the oldest event not yet committed (spooled or queued); 0 when none."""
        oldest = self.spool.oldest_at()
        if oldest is None:
            try:
                oldest = self._queue[0].ts
            except IndexError:
                return 0
        return max(0, int((time.time() - oldest) * 1000))

    # -- the writer thread ----------------------------------------------------------------

    def start(self) -> None:
        self._state = "running"
        self._thread = threading.Thread(target=self._run, name="hq-event-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Flush what is queued (to Postgres, or the spool) and stop."""
        self._give_up_at = time.monotonic() + timeout * 0.8
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        if thread is None or not thread.is_alive():
            if self._queue:  # never started, or died: keep what it held
                self._spool_queue()
            self.store.reset()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:
            self._state = "dead"
            log.critical("the event writer thread stopped after repeated errors", exc_info=True)
            raise
        self._state = "stopped"

    def _loop(self) -> None:
        failures = 0
        while True:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            try:
                self._cycle(stopping)
                failures = 0
            except Exception:
                failures += 1
                self.counters["writer_errors"] += 1
                log.exception("event writer: unexpected error (%d in a row)", failures)
                if failures >= FAILURES_MAX:
                    raise
                if not stopping:
                    self._stop.wait(min(failures, 5))
                    continue
                self._spool_queue()
            if stopping:
                return

    def _cycle(self, stopping: bool) -> None:
        """One wake-up: write (spool first, then the queue), or, while Postgres is away,
        spill the queue to disk until the next attempt is due."""
        if self._down:
            due = time.monotonic() >= self._retry_at
            partial = time.monotonic() - self._last_spill >= SPILL_PARTIAL_S
            self._spill(everything=due or partial or stopping)
            if not due and not stopping:
                return
        try:
            self.flush(bounded=True)
        except TRANSIENT as exc:
            self._db_down(exc)
            self._spill(everything=True)
            return
        if self._down:
            log.info("Postgres is back: ingest resumed (%d batches still spooled)",
                     len(self.spool))
        self._down = False
        self._backoff = 0.5

    def flush(self, *, bounded: bool = False) -> None:
        """Write spooled batches, then everything queued. Raises a transient psycopg
        error (``OperationalError``) when Postgres is away: the batch in hand is spooled
        first. ``bounded`` (the thread): keep at most ``queue_max`` events in memory, and
        when stopping, give up replaying in time and spool the rest."""
        while True:
            # Spooled batches are older than anything queued, and the job upsert folds
            # deltas in the order they are written: replay the spool again before each
            # queued batch, since keeping the queue bounded may have spilled to it.
            self._replay_spool(bounded)
            if not self._queue:
                return
            if bounded and self._out_of_time():
                self._spill(everything=True)
                return
            self._write_or_spool(self._take())
            if bounded:
                self._spill(everything=False, keep=self.queue_max)

    def _out_of_time(self) -> bool:
        return self._give_up_at is not None and time.monotonic() >= self._give_up_at

    def _take(self) -> Batch:
        queue = self._queue
        if queue:  # pending until written or spooled (see pending_since)
            self._writing_since = queue[0].ts
        events = [queue.popleft() for _ in range(min(self.batch, len(queue)))]
        self.counters["events_in"] += len(events)
        if events:
            payload = sum(len(e.data) for e in events if e.data)
            self._event_bytes = EVENT_BYTES + payload / len(events)
        return Batch(uuid.uuid4(), self._rows(events))

    def _spool_queue(self) -> None:
        while self._queue:
            self._spool_put(self._take())

    def _spill(self, *, everything: bool, keep: int = 0) -> None:
        """Move queued events to the spool, oldest first, in batch-sized files: all of
        them (``everything``), else whole batches while more than ``keep`` wait or they
        hold more than ``queue_bytes_max``."""
        queue = self._queue
        while queue and (everything or (len(queue) >= self.batch and (
                len(queue) > keep or len(queue) * self._event_bytes > self.queue_bytes_max))):
            self._spool_put(self._take())
        if everything:
            self._last_spill = time.monotonic()

    def _replay_spool(self, bounded: bool = False) -> None:
        while True:
            if bounded and self._out_of_time():
                return
            try:
                item = self.spool.oldest()
            except SpoolCorrupt as exc:
                self._set_aside(exc)
                continue
            if item is None:
                return
            name, batch = item
            if not isinstance(batch, Batch):
                self._set_aside(SpoolCorrupt(name, TypeError(f"not a batch: {type(batch)}")))
                continue
            self._write(batch)
            self.spool.remove(name)
            log.info("replayed spooled batch %s (%d events)", name, len(batch.rows))
            if bounded:
                self._spill(everything=False, keep=self.queue_max)

    def _set_aside(self, exc: SpoolCorrupt) -> None:
        path = self.spool.move_aside(exc.name, self.quarantine.dir)
        self.quarantine.corrupt_file(path)
        log.error("%s; moved to %s and skipped", exc, path)

    def _db_down(self, exc: Exception) -> None:
        self.counters["db_errors"] += 1
        self.store.reset()
        if not self._down or self.counters["db_errors"] % 20 == 1:
            log.warning("Postgres unavailable (%s); spooling events to %s, next try in %.1f s",
                        error_text(exc), self.spool.dir, self._backoff)
        self._down = True
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)

    # -- turning events into rows ---------------------------------------------------------

    def _next_id(self) -> uuid.UUID:
        self._seq += 1
        return event_id(self._prefix | self._seq)

    def _rows(self, events: list[Event]) -> list[EventRow]:
        rows, rejected = rows_of(events, self._next_id)
        for event, why in rejected:
            self.quarantine.add([event], error=why, kind="event")
            log.warning("quarantined an event that cannot be stored: %s", why[:300])
        return rows

    # -- the database side ------------------------------------------------------------------

    def _write_or_spool(self, batch: Batch) -> None:
        try:
            self._write(batch)
        except TRANSIENT:
            self._spool_put(batch)
            raise

    def _write(self, batch: Batch) -> None:
        if batch.rows:
            self._writing_since = batch.rows[0].at.timestamp()
        try:
            done = self.store.write(batch)
        finally:
            self._writing_since = None
        c = self.counters
        c["batches"] += done.batches
        c["events_written"] += done.events
        c["duplicates"] += done.duplicates
        if batch.rows:
            c["commit_lag_ms"] = int((time.time() - batch.rows[-1].at.timestamp()) * 1000)

    def _spool_put(self, batch: Batch) -> None:
        self._writing_since = None  # on disk now (or counted lost)
        rows = batch.rows
        if not rows:
            return
        try:
            dropped = self.spool.put(batch, events=len(rows), first_at=rows[0].at.timestamp())
        except OSError as exc:
            self.counters["lost_events"] += len(rows)
            log.error("could not spool %d events to %s (%s): they are lost", len(rows),
                      self.spool.dir, exc)
            return
        self.counters["spooled_batches"] += 1
        if dropped:
            lost = sum(e.events for e in dropped)
            self.counters["spool_dropped_events"] += lost
            log.error("spool %s is full (HQ_SPOOL_MAX=%d bytes, or its disk): dropped the "
                      "%d oldest batches (%d events) to make room", self.spool.dir,
                      self.spool.max_bytes, len(dropped), lost)
        self._check_fill()

    def _check_fill(self) -> None:
        limit = self.spool.max_bytes
        if not limit:
            return
        fill = self.spool.size_bytes() / limit
        if fill >= SPOOL_WARN and not self._spool_warned:
            self._spool_warned = True
            log.warning("spool %s is %.0f %% full (%d of HQ_SPOOL_MAX=%d bytes)",
                        self.spool.dir, fill * 100, self.spool.size_bytes(), limit)
        elif fill < SPOOL_WARN / 2:
            self._spool_warned = False


_new_object = object.__new__
_set = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown


def event_id(value: int) -> uuid.UUID:
    """``uuid.UUID(int=value)`` for a value known to be in range, at a quarter of the
    cost (one per event): UUID's ``__init__`` checks and converts every form it accepts."""
    made = _new_object(uuid.UUID)
    _set(made, "int", value)
    _set(made, "is_safe", _UNKNOWN)
    return made


def conninfo_from_settings() -> str:
    """The writer's own connection: bounded connect time and statement time, keepalives so
    a vanished server is noticed, times in UTC."""
    from django.conf import settings

    db: dict[str, Any] = settings.DATABASES["default"]
    statement_ms = settings.HQ_INGEST_STATEMENT_TIMEOUT_MS
    return psycopg.conninfo.make_conninfo(
        dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"] or None,
        host=db["HOST"], port=db["PORT"], application_name="gearman-hq-ingest",
        connect_timeout=max(1, settings.HQ_INGEST_CONNECT_TIMEOUT_S),
        keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
        options=f"-c timezone=UTC -c statement_timeout={int(statement_ms)}",
    )
