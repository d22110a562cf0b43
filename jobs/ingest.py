"""Where an event becomes a row: the batch writer behind every tap.

The tap's hot loop only calls :meth:`EventWriter.emit` (a deque append). A writer thread
takes the queued events in batches and, in one transaction per batch:

1. records the batch's id in ``jobs_ingestbatch``; if it is there already, the batch was
   written before (a spooled batch replayed after a crash) and is skipped whole,
2. COPYs the events straight into the partitioned ``jobs_jobevent`` table,
3. folds them into one delta per job (``jobs/fold.py``), COPYs the deltas into a staging
   table and merges them into ``jobs_job`` with one statement (``UPSERT_SQL``).

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

from .fold import Delta, EventRow, fold, split_bytes
from .spool import Spool

log = logging.getLogger(__name__)

EVENT_COLUMNS = (
    "id", "at", "server_id", "boot_id", "handle", "kind", "conn", "worker", "numerator",
    "denominator", "data_text", "data_bin", "size", "detail",
)
#: Postgres types of EVENT_COLUMNS, for binary COPY (no text formatting in Python)
EVENT_TYPES = ("uuid", "timestamptz", "int8", "int8", "varchar", "varchar", "varchar",
               "varchar", "int8", "int8", "text", "bytea", "int4", "text")
DELTA_COLUMNS = (
    "boot_id", "handle", "function", "unique", "priority", "background", "state",
    "state_initial", "submitted_at", "scheduled_for", "first_started_at", "started_at",
    "finished_at", "attempts", "worker", "progress_numerator", "progress_denominator",
    "payload_text", "payload_bin", "payload_size", "result_text", "result_bin", "result_size",
    "error", "clients",
)

DELTA_TYPES = (
    "int8", "varchar", "varchar", "varchar", "varchar", "bool", "varchar", "bool",
    "timestamptz", "timestamptz", "timestamptz", "timestamptz", "timestamptz", "int4",
    "varchar", "int8", "int8", "text", "bytea", "int4", "text", "bytea", "int4", "text",
    "int4",
)
assert len(DELTA_TYPES) == len(DELTA_COLUMNS) and len(EVENT_TYPES) == len(EVENT_COLUMNS)

STAGE_SQL = """
CREATE TEMP TABLE IF NOT EXISTS stage_jobs (
    boot_id bigint, handle varchar(255), function varchar(255), "unique" varchar(255),
    priority varchar(6), background boolean, state varchar(10), state_initial boolean,
    submitted_at timestamptz, scheduled_for timestamptz, first_started_at timestamptz,
    started_at timestamptz, finished_at timestamptz, attempts integer, worker varchar(255),
    progress_numerator bigint, progress_denominator bigint, payload_text text,
    payload_bin bytea, payload_size integer, result_text text, result_bin bytea,
    result_size integer, error text, clients integer
) ON COMMIT DELETE ROWS;
"""
# How a batch's deltas reach jobs_job, in one statement: the CTE inserts the jobs seen for
# the first time; the UPDATE, which runs on the statement's snapshot and so cannot see those
# new rows, merges the deltas of jobs already stored. j = stored row, s = staged delta.
def _ms(a: str, b: str) -> str:
    return f"(extract(epoch FROM {a} - {b}) * 1000)::int"


UPSERT_SQL = f"""
WITH inserted AS (
    INSERT INTO jobs_job (
        server_id, boot_id, handle, function, "unique", priority, background, state,
        submitted_at, scheduled_for, started_at, finished_at, wait_ms, runtime_ms, attempts,
        worker, progress_numerator, progress_denominator, payload_text, payload_bin,
        payload_size, result_text, result_bin, result_size, error, clients, updated_at)
    SELECT %(server)s, s.boot_id, s.handle, coalesce(s.function, ''),
        coalesce(s."unique", ''), coalesce(s.priority, ''), s.background,
        coalesce(s.state, 'running'), s.submitted_at, s.scheduled_for, s.started_at,
        s.finished_at, {_ms("s.first_started_at", "s.submitted_at")},
        {_ms("s.finished_at", "s.started_at")}, s.attempts, coalesce(s.worker, ''),
        s.progress_numerator, s.progress_denominator, s.payload_text, s.payload_bin,
        coalesce(s.payload_size, 0), s.result_text, s.result_bin, coalesce(s.result_size, 0),
        coalesce(s.error, ''), s.clients, now()
    FROM stage_jobs s
    ON CONFLICT (boot_id, handle) DO NOTHING
    RETURNING id, handle, function, state
), updated AS (
UPDATE jobs_job j SET
    function = CASE WHEN s.function <> '' THEN s.function ELSE j.function END,
    "unique" = CASE WHEN s."unique" <> '' THEN s."unique" ELSE j."unique" END,
    priority = CASE WHEN s.priority <> '' THEN s.priority ELSE j.priority END,
    background = coalesce(s.background, j.background),
    state = CASE WHEN s.state IS NULL OR s.state_initial THEN j.state ELSE s.state END,
    submitted_at = coalesce(j.submitted_at, s.submitted_at),
    scheduled_for = coalesce(s.scheduled_for, j.scheduled_for),
    started_at = coalesce(s.started_at, j.started_at),
    finished_at = CASE WHEN s.started_at IS NOT NULL
                            OR (s.state = 'queued' AND NOT s.state_initial) THEN s.finished_at
                       ELSE coalesce(s.finished_at, j.finished_at) END,
    wait_ms = coalesce(j.wait_ms, {_ms("coalesce(s.first_started_at, j.started_at)",
                                        "coalesce(j.submitted_at, s.submitted_at)")}),
    runtime_ms = CASE
        WHEN s.finished_at IS NOT NULL
            THEN {_ms("s.finished_at", "coalesce(s.started_at, j.started_at)")}
        WHEN s.started_at IS NOT NULL OR (s.state = 'queued' AND NOT s.state_initial)
            THEN NULL
        ELSE j.runtime_ms END,
    attempts = j.attempts + s.attempts,
    worker = CASE WHEN s.worker <> '' THEN s.worker ELSE j.worker END,
    progress_numerator = coalesce(s.progress_numerator, j.progress_numerator),
    progress_denominator = coalesce(s.progress_denominator, j.progress_denominator),
    payload_text = CASE WHEN j.payload_text IS NULL AND j.payload_bin IS NULL
                        THEN s.payload_text ELSE j.payload_text END,
    payload_bin = CASE WHEN j.payload_text IS NULL AND j.payload_bin IS NULL
                       THEN s.payload_bin ELSE j.payload_bin END,
    payload_size = CASE WHEN j.payload_text IS NULL AND j.payload_bin IS NULL
                        THEN coalesce(s.payload_size, j.payload_size) ELSE j.payload_size END,
    result_text = CASE WHEN s.result_size IS NOT NULL THEN s.result_text ELSE j.result_text END,
    result_bin = CASE WHEN s.result_size IS NOT NULL THEN s.result_bin ELSE j.result_bin END,
    result_size = coalesce(s.result_size, j.result_size),
    error = CASE WHEN s.error <> '' THEN s.error ELSE j.error END,
    clients = j.clients + s.clients,
    updated_at = now()
FROM stage_jobs s
WHERE j.boot_id = s.boot_id AND j.handle = s.handle
RETURNING j.id, j.handle, j.function, j.state
)
SELECT * FROM inserted UNION ALL SELECT * FROM updated
"""


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
        on_commit: Callable[[list[tuple[int, str, str, str]]], None] | None = None,
    ) -> None:
        self.server_name = server
        self.address = address
        self.conninfo = conninfo
        self.batch = batch
        self.flush_s = flush_ms / 1000
        self.spool = Spool(spool_dir / server)
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
            conn.execute(STAGE_SQL)
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
            if not self._claim(conn, server_id, batch):
                self.counters["duplicates"] += len(rows)
                return
            boots = {token: self._boot(conn, server_id, token, rows)
                     for token in {r.boot for r in rows}}
            self._ensure_partitions(conn, rows)
            self._insert_events(conn, server_id, boots, rows)
            changed = self._upsert_jobs(conn, server_id, boots, fold(rows))
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
            row = conn.execute(
                "INSERT INTO monitoring_server (name, address, created_at, last_seen) "
                "VALUES (%s, %s, now(), now()) ON CONFLICT (name) DO UPDATE "
                "SET last_seen = now(), address = CASE WHEN excluded.address <> '' "
                "THEN excluded.address ELSE monitoring_server.address END RETURNING id",
                (self.server_name, self.address),
            ).fetchone()
            assert row is not None
            self._server_id = row[0]
        return self._server_id

    def _boot(self, conn: psycopg.Connection[Any], server_id: int, token: str,
              rows: list[EventRow]) -> int:
        boot_id = self._boots.get(token)
        if boot_id is None:
            first = min(r.at for r in rows if r.boot == token)
            conn.execute(
                "INSERT INTO monitoring_boot (server_id, token, first_seen) VALUES (%s, %s, %s) "
                "ON CONFLICT (server_id, token) DO NOTHING", (server_id, token, first))
            row = conn.execute("SELECT id FROM monitoring_boot WHERE server_id = %s "
                               "AND token = %s", (server_id, token)).fetchone()
            assert row is not None
            boot_id = self._boots[token] = row[0]
        return boot_id

    def _ensure_partitions(self, conn: psycopg.Connection[Any], rows: list[EventRow]) -> None:
        days = {r.at.date() for r in rows} - self._partitions
        for day in days:
            conn.execute("SELECT hq_ensure_event_partition(%s)", (day,))
            self._partitions.add(day)

    @staticmethod
    def _claim(conn: psycopg.Connection[Any], server_id: int, batch: Batch) -> bool:
        """True the first time a batch is written; False when it was written before."""
        cur = conn.execute(
            "INSERT INTO jobs_ingestbatch (id, server_id, events, written_at) "
            "VALUES (%s, %s, %s, now()) ON CONFLICT (id) DO NOTHING",
            (batch.id, server_id, len(batch.rows)))
        return cur.rowcount == 1

    def _insert_events(self, conn: psycopg.Connection[Any], server_id: int,
                       boots: dict[str, int], rows: list[EventRow]) -> None:
        cols = ", ".join(EVENT_COLUMNS)
        with conn.cursor() as cur, cur.copy(
                f"COPY jobs_jobevent ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(EVENT_TYPES)
            for r in rows:
                copy.write_row((
                    r.id, r.at, server_id, boots[r.boot], r.handle, r.kind, r.conn,
                    r.worker, r.numerator, r.denominator, r.data_text, r.data_bin,
                    r.size, r.detail,
                ))

    def _upsert_jobs(self, conn: psycopg.Connection[Any], server_id: int,
                     boots: dict[str, int], deltas: list[Delta]
                     ) -> list[tuple[int, str, str, str]]:
        if not deltas:
            return []
        cols = ", ".join(f'"{c}"' for c in DELTA_COLUMNS)
        rest = DELTA_COLUMNS[1:]
        with conn.cursor() as cur:
            with cur.copy(f"COPY stage_jobs ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(DELTA_TYPES)
                for d in deltas:
                    copy.write_row((boots[d.boot], *(getattr(d, c) for c in rest)))
            cur.execute(UPSERT_SQL, {"server": server_id})
            return cur.fetchall()


def conninfo_from_settings() -> str:
    from django.conf import settings

    db = settings.DATABASES["default"]
    return psycopg.conninfo.make_conninfo(
        dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"] or None,
        host=db["HOST"], port=db["PORT"], application_name="gearman-hq-ingest",
        options="-c timezone=UTC",
    )


