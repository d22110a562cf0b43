"""What one batch does to Postgres: every statement the event writer runs.

Built once, at import, with :mod:`psycopg.sql`: table names from the models'
``_meta.db_table``, the event columns from the ``JobEvent`` model, the staged job columns
from the ``Delta`` dataclass (``jobs/columns.py``), the long statements from the ``.sql``
files in ``jobs/sql/``. Every function here runs inside the writer's batch transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import date, datetime
from operator import attrgetter
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from django.db import connection
from psycopg import sql

from .columns import (
    Column,
    copy_from_stdin,
    copy_types,
    create_temp_table,
    dataclass_columns,
    field_column,
)
from .fold import Delta, EventRow
from .models import Boot, IngestBatch, Job, JobEvent, Server

Conn = psycopg.Connection[Any]
#: (id, handle, function, state) of a job a batch changed
Changed = tuple[int, str, str, str]

SQL_DIR = Path(__file__).with_name("sql")
STAGE = "stage_jobs"


def load_sql(name: str) -> sql.SQL:
    """A statement kept in ``jobs/sql/``, with ``{placeholders}`` for psycopg.sql."""
    return sql.SQL((SQL_DIR / name).read_text())


def table(model: type[Any]) -> sql.Identifier:
    return sql.Identifier(model._meta.db_table)


def _event_columns() -> tuple[Column, ...]:
    """jobs_jobevent's columns: the two ids the writer resolves (server_id, boot_id), then
    the others, each held by the EventRow attribute of the same name."""
    by_name = {c.name: c for c in (field_column(f, connection)
                                   for f in JobEvent._meta.concrete_fields)}
    ids = (by_name.pop("server_id"), by_name.pop("boot_id"))
    missing = set(by_name) - {f.name for f in fields(EventRow)}
    if missing:
        raise TypeError(f"EventRow has no value for the event columns {sorted(missing)}")
    return (*ids, *by_name.values())


EVENT_COLUMNS = _event_columns()
#: an EventRow's values for EVENT_COLUMNS[2:]
event_values = attrgetter(*(c.name for c in EVENT_COLUMNS[2:]))
#: the staged job: the id of the delta's boot, then the delta's other fields
STAGE_COLUMNS = (field_column(Job._meta.get_field("boot"), connection),
                 *dataclass_columns(Delta, skip=("boot",)))
delta_values = attrgetter(*(c.name for c in STAGE_COLUMNS[1:]))

CREATE_STAGE = create_temp_table(STAGE, STAGE_COLUMNS)
COPY_EVENTS = copy_from_stdin(JobEvent._meta.db_table, EVENT_COLUMNS)
EVENT_TYPES = copy_types(EVENT_COLUMNS)
COPY_STAGE = copy_from_stdin(STAGE, STAGE_COLUMNS)
STAGE_TYPES = copy_types(STAGE_COLUMNS)
UPSERT_JOBS = load_sql("upsert_jobs.sql").format(job=table(Job), stage=sql.Identifier(STAGE))
UPSERT_SERVER = load_sql("upsert_server.sql").format(server=table(Server))
#: The upsert's UPDATE joins a batch's deltas (a few thousand) to the job table by its
#: unique (boot_id, handle) index. The staging table has no statistics and the job
#: table's lag behind its growth, so the planner would otherwise often hash the *whole*
#: job table for every batch (a cost that grows with the table: 17 ms a batch at 19k jobs,
#: measured with auto_explain). For the rest of the batch's transaction only.
JOIN_BY_INDEX = sql.SQL("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
INSERT_BOOT = sql.SQL(
    "INSERT INTO {} (server_id, token, first_seen) VALUES (%s, %s, %s) "
    "ON CONFLICT (server_id, token) DO NOTHING").format(table(Boot))
SELECT_BOOT = sql.SQL("SELECT id FROM {} WHERE server_id = %s AND token = %s").format(
    table(Boot))
CLAIM_BATCH = sql.SQL(
    "INSERT INTO {} (id, server_id, events, written_at) VALUES (%s, %s, %s, now()) "
    "ON CONFLICT (id) DO NOTHING").format(table(IngestBatch))


def create_stage(conn: Conn) -> None:
    conn.execute(CREATE_STAGE)


def server_id(conn: Conn, name: str, address: str) -> int:
    row = conn.execute(UPSERT_SERVER, {"name": name, "address": address}).fetchone()
    assert row is not None
    return int(row[0])


def boot_id(conn: Conn, server: int, token: str, first_seen: datetime) -> int:
    conn.execute(INSERT_BOOT, (server, token, first_seen))
    row = conn.execute(SELECT_BOOT, (server, token)).fetchone()
    assert row is not None
    return int(row[0])


def ensure_partition(conn: Conn, day: date) -> None:
    conn.execute("SELECT hq_ensure_event_partition(%s)", (day,))


def claim(conn: Conn, batch_id: UUID, server: int, events: int) -> bool:
    """True the first time a batch is written; False when it was written before."""
    return conn.execute(CLAIM_BATCH, (batch_id, server, events)).rowcount == 1


def copy_events(conn: Conn, server: int, boots: dict[str, int],
                rows: Sequence[EventRow]) -> None:
    with conn.cursor() as cur, cur.copy(COPY_EVENTS) as copy:
        copy.set_types(EVENT_TYPES)
        values = event_values
        for r in rows:
            copy.write_row((server, boots[r.boot], *values(r)))


def upsert_jobs(conn: Conn, server: int, boots: dict[str, int],
                deltas: Sequence[Delta]) -> list[Changed]:
    """Stage the deltas and merge them into the job table; what changed."""
    if not deltas:
        return []
    with conn.cursor() as cur:
        with cur.copy(COPY_STAGE) as copy:
            copy.set_types(STAGE_TYPES)
            values = delta_values
            for d in deltas:
                copy.write_row((boots[d.boot], *values(d)))
        cur.execute(JOIN_BY_INDEX)
        cur.execute(UPSERT_JOBS, {"server": server})
        return cur.fetchall()
