"""Fold a batch of lifecycle events into one change ("delta") per job.

Pure Python, no database: ``jobs/store.py`` writes the deltas with one upsert whose SQL
merges them into the rows already stored (``jobs/sql/upsert_jobs.sql``). Keeping the rules
here, in one place, lets tests check them on event lists alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .columns import Bigint, Boolean, Bytea, Integer, Text, Timestamptz, Varchar

#: the events that set a job's state, and the state they set
STATE_OF = {
    "started": "running",
    "completed": "completed",
    "failed": "failed",
    "exception": "failed",
    "worker_lost": "queued",
    "cancelled": "cancelled",
    "lost": "lost",
}
FINISHING = frozenset({"completed", "failed", "exception", "cancelled", "lost"})


@dataclass(slots=True)
class Delta:
    """What one batch says about one job. ``None`` means "the batch says nothing".

    Its fields, with the Postgres types their annotations carry, are the columns of the
    staging table the writer COPYs deltas into (``jobs/store.py``); ``boot``, a boot token,
    is staged as the id of its Boot row.
    """

    boot: str
    handle: Varchar
    function: Varchar | None = None
    unique: Varchar | None = None
    priority: Varchar | None = None
    background: Boolean | None = None
    state: Varchar | None = None
    state_initial: Boolean = False  # only a submit set the state: never overrides a stored one
    submitted_at: Timestamptz | None = None
    scheduled_for: Timestamptz | None = None
    first_started_at: Timestamptz | None = None
    started_at: Timestamptz | None = None
    finished_at: Timestamptz | None = None
    attempts: Integer = 0
    worker: Varchar | None = None
    progress_numerator: Bigint | None = None
    progress_denominator: Bigint | None = None
    payload_text: Text | None = None
    payload_bin: Bytea | None = None
    payload_size: Integer | None = None
    result_text: Text | None = None
    result_bin: Bytea | None = None
    result_size: Integer | None = None
    error: Text | None = None
    clients: Integer = 0


@dataclass(slots=True)
class EventRow:
    """An event as the writer stores it (the tracker's Event plus resolved ids).

    Never changed once built; not ``frozen`` because a frozen dataclass builds (and
    unpickles from the spool) field by field through Python, 3× slower per row."""

    id: object
    at: datetime
    boot: str  # the tracker's boot token; the writer maps it to a Boot row
    handle: str
    kind: str
    conn: str
    worker: str
    numerator: int | None
    denominator: int | None
    data_text: str | None
    data_bin: bytes | None
    size: int
    detail: str
    function: str | None = None
    unique: str | None = None
    priority: str | None = None
    background: bool | None = None
    scheduled_for: datetime | None = None


def split_bytes(raw: bytes | None, cut: bool = False) -> tuple[str | None, bytes | None]:
    """Text when it is valid UTF-8 Postgres can hold (no NUL), else bytes. When ``cut``
    (the data was truncated at HQ_PAYLOAD_MAX) a character split by the cut is dropped."""
    if raw is None:
        return None, None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not cut or exc.start < len(raw) - 3 or exc.reason != "unexpected end of data":
            return None, raw
        text = raw[: exc.start].decode("utf-8")
    if "\0" in text:
        return None, raw
    return text, None


def payload_bytes(payload: bytes | str | None) -> bytes:
    """A stored payload (``Job.payload``: text, bytes or none) as the bytes to submit again."""
    return payload.encode() if isinstance(payload, str) else (payload or b"")


def fold(rows: list[EventRow]) -> list[Delta]:
    """One delta per (boot, handle), applying the rows in order."""
    deltas: dict[tuple[str, str], Delta] = {}
    for row in rows:
        key = (row.boot, row.handle)
        delta = deltas.get(key)
        if delta is None:
            delta = deltas[key] = Delta(row.boot, row.handle)
        apply(delta, row)
    return list(deltas.values())


def apply(d: Delta, row: EventRow) -> None:
    kind = row.kind
    if row.function is not None:
        d.function = row.function
    if row.unique is not None and row.unique != "":
        d.unique = row.unique
    if kind == "submitted":
        _submitted(d, row)
    elif kind == "attached":
        d.clients += 1
    elif kind == "started":
        _started(d, row)
    elif kind == "status":
        d.progress_numerator = row.numerator
        d.progress_denominator = row.denominator
    elif kind == "abandoned":
        if row.detail == "queued":  # gearmand drops a queued job nobody waits for
            _set_state(d, "lost", row)
            d.finished_at = row.at
            d.error = "the client went away before a worker took the job"
        return
    if kind in STATE_OF:
        _set_state(d, STATE_OF[kind], row)
        _finished(d, row)


def _submitted(d: Delta, row: EventRow) -> None:
    d.priority = row.priority
    d.background = row.background
    d.submitted_at = row.at
    d.scheduled_for = row.scheduled_for
    d.payload_text, d.payload_bin, d.payload_size = row.data_text, row.data_bin, row.size
    d.clients += 1
    if d.state is None:
        d.state = "scheduled" if row.scheduled_for is not None else "queued"
        d.state_initial = True


def _started(d: Delta, row: EventRow) -> None:
    d.attempts += 1
    d.worker = row.worker or None
    d.started_at = row.at
    if d.first_started_at is None:
        d.first_started_at = row.at
    d.finished_at = None
    if d.payload_size is None and row.size:
        # joined mid-stream: the assignment carries the payload the submit did
        d.payload_text, d.payload_bin, d.payload_size = row.data_text, row.data_bin, row.size


def _set_state(d: Delta, state: str, row: EventRow) -> None:
    d.state = state
    d.state_initial = False
    if state == "queued":
        d.progress_numerator = d.progress_denominator = 0


def _finished(d: Delta, row: EventRow) -> None:
    kind = row.kind
    if kind not in FINISHING:
        return
    d.finished_at = row.at
    if row.worker:
        d.worker = row.worker
    if kind == "completed":
        d.result_text, d.result_bin, d.result_size = row.data_text, row.data_bin, row.size
    elif kind == "exception":
        text = row.data_text if row.data_text is not None else repr(row.data_bin)
        d.error = text or "exception (no message)"
    elif kind == "failed":
        d.error = row.detail or "the worker reported failure (WORK_FAIL)"
    else:
        d.error = row.detail or kind
