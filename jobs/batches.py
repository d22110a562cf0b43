"""One batch into Postgres, and what happens when Postgres says no.

:class:`BatchStore` owns the writer's connection and writes a :class:`Batch` in one
transaction (``jobs/store.py`` has the statements). Its failures fall in two kinds:

* **transient** — the database is away, overloaded or not usable as it stands
  (:data:`TRANSIENT`: connection failures, ``OperationalError`` such as a shutdown, a
  statement timeout or a deadlock, ``InterfaceError``, and ``ProgrammingError``: a missing
  table or a revoked privilege, which no value of a row causes and which splitting would
  only turn into every row quarantined). They propagate: the caller spools the batch and
  retries later.
* **the data** — anything else (``DataError``, ``IntegrityError``, other database errors,
  or an exception from building the COPY such as a number past ``bigint``). Retrying
  cannot help, so the batch is split in halves, each written in its own transaction, down
  to the single rows that fail; those go to the quarantine (``jobs/quarantine.py``) and
  every other row is written. Sub-batches get ids derived from the batch id and their
  place in it, so a spooled batch replayed after a crash mid-split skips what was written.

:func:`rows_of` turns tracker events into rows and never raises: a value Python cannot
convert (an epoch past year 9999) becomes ``None``; an event that cannot be a row at all
is returned apart, for the quarantine.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import psycopg

from broker.tracker import Event

from . import store
from .fold import EventRow, fold, split_bytes
from .quarantine import Quarantine
from .restored import Linker

log = logging.getLogger(__name__)

#: errors that say "Postgres is away (too busy, not migrated)", not "this data is wrong"
TRANSIENT: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError,
                                          psycopg.ProgrammingError)
#: quarantined rows logged one by one, then one in LOG_EVERY
LOG_FIRST, LOG_EVERY = 20, 1000


@dataclass(frozen=True, slots=True)
class Batch:
    """The unit that commits, spools and replays: its id makes a replay a no-op."""

    id: uuid.UUID
    rows: list[EventRow]


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT)


def error_text(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {str(exc).strip()}"


# -- events into rows ---------------------------------------------------------------------------

def timestamp(seconds: float | None) -> datetime | None:
    """A UTC datetime, or None when there is none or Python cannot represent it."""
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError, TypeError):
        return None


def row_of(ev: Event, row_id: uuid.UUID) -> EventRow:
    at = timestamp(ev.ts)
    if at is None:
        raise ValueError(f"event time {ev.ts!r} is not a representable time")
    text, raw = split_bytes(ev.data, ev.data is not None and ev.size > len(ev.data))
    return EventRow(
        row_id, at, ev.boot, ev.handle, ev.kind, ev.conn, ev.worker or "", ev.numerator,
        ev.denominator, text, raw, ev.size, ev.detail or "", ev.function, ev.unique,
        ev.priority, ev.background, timestamp(ev.epoch) if ev.epoch else None,
    )


def rows_of(events: Sequence[Event], next_id: Callable[[], uuid.UUID],
            ) -> tuple[list[EventRow], list[tuple[Event, str]]]:
    """Rows for the events that can be rows; the others with the reason they cannot."""
    rows: list[EventRow] = []
    rejected: list[tuple[Event, str]] = []
    for ev in events:
        try:
            rows.append(row_of(ev, next_id()))
        except Exception as exc:  # one odd event must not cost the batch
            rejected.append((ev, error_text(exc)))
    return rows, rejected


# -- the database side ---------------------------------------------------------------------------

@dataclass
class Written:
    events: int = 0
    duplicates: int = 0
    quarantined: int = 0
    batches: int = 0


class BatchStore:
    """Writes batches over one connection; splits around rows Postgres refuses."""

    def __init__(self, server: str, address: str, conninfo: str, quarantine: Quarantine, *,
                 on_commit: Callable[[list[store.Changed]], None] | None = None) -> None:
        self.server_name = server
        self.address = address
        self.conninfo = conninfo
        self.quarantine = quarantine
        self.on_commit = on_commit
        self.restored = Linker(store.STAGE)  # jobs gearmand restored after a restart
        self.conn: psycopg.Connection[Any] | None = None
        self._server_id: int | None = None
        self._boots: dict[str, int] = {}
        self._partitions: set[date] = set()

    def write(self, batch: Batch) -> Written:
        """Commit ``batch``; rows Postgres refuses are quarantined, the others written.
        Raises a :data:`TRANSIENT` error when the database is away (nothing is lost:
        what committed is claimed by id, the caller spools the batch)."""
        done = Written()
        if batch.rows:
            self._write_part(batch.id, batch.rows, 0, done, None)
        return done

    def _write_part(self, parent: uuid.UUID, rows: list[EventRow], start: int, done: Written,
                    first_error: BaseException | None) -> None:
        part_id = parent if first_error is None else uuid.uuid5(
            parent, f"{start}:{start + len(rows)}")
        try:
            self._commit(part_id, rows, done)
            return
        except TRANSIENT:
            self.reset()
            raise
        except Exception as exc:  # the data, or a bug on the way: never the whole stream
            self._forget_caches()
            self._rolled_back()
            error = exc
        if first_error is None and not isinstance(error, psycopg.Error):
            log.error("batch %s failed unexpectedly; isolating the rows that fail", parent,
                      exc_info=error)
        if len(rows) == 1:
            done.quarantined += self.quarantine.add(rows, error=error_text(error),
                                                    batch=str(parent))
            self._log_quarantined(rows[0], error)
            return
        mid = len(rows) // 2
        self._write_part(parent, rows[:mid], start, done, error)
        self._write_part(parent, rows[mid:], start + mid, done, error)

    def _log_quarantined(self, row: EventRow, error: BaseException) -> None:
        """The first few, then one in :data:`LOG_EVERY`: bad values come in floods."""
        n = int(self.quarantine.counters["quarantined_events"])
        if n <= LOG_FIRST or n % LOG_EVERY == 0:
            log.warning("quarantined event #%d (%s of %r) to %s: %s", n, row.kind,
                        row.handle[:80], self.quarantine.dir, error_text(error)[:300])

    def _rolled_back(self) -> None:
        """After a failed transaction: a connection left broken is dropped (the next
        write reconnects, and says so with a transient error if it cannot)."""
        conn = self.conn
        if conn is not None and (conn.closed or conn.broken):
            self.reset()

    def _commit(self, batch_id: uuid.UUID, rows: list[EventRow], done: Written) -> None:
        conn = self.connection()
        started = time.monotonic()
        with conn.transaction():
            server_id = self._server(conn)
            if not store.claim(conn, batch_id, server_id, len(rows)):
                done.duplicates += len(rows)
                return
            boots = {token: self._boot(conn, server_id, token, rows)
                     for token in {r.boot for r in rows}}
            self._ensure_partitions(conn, rows)
            store.copy_events(conn, server_id, boots, rows)
            changed = store.upsert_jobs(conn, server_id, boots, fold(rows))
            self.restored.link(conn, server_id, rows)
        done.events += len(rows)
        done.batches += 1
        log.debug("batch of %d events in %.1f ms", len(rows),
                  (time.monotonic() - started) * 1000)
        if self.on_commit is not None:
            try:
                self.on_commit(changed)
            except Exception:  # a live-stream hiccup must never stop ingest
                log.exception("on_commit hook failed")

    # -- connection and the ids it caches ------------------------------------------------------

    def connection(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            conn = psycopg.connect(self.conninfo, autocommit=False)
            try:
                store.create_stage(conn)
                conn.commit()
            except BaseException:
                conn.close()
                raise
            self.conn = conn
            self._forget_caches()
        return self.conn

    def reset(self) -> None:
        """Drop the connection (after a transient error, or on stop)."""
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
        self.conn = None
        self._forget_caches()

    def _forget_caches(self) -> None:
        """Ids learnt in a transaction that rolled back may not exist: learn them again."""
        self._server_id = None
        self._boots.clear()
        self._partitions.clear()

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
