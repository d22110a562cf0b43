"""gearmand's own persistent queue table (``-q Postgres``), made before gearmand starts.

gearmand 1.1.20 creates its table with ``UNIQUE (unique_key, function_name)`` and then
refuses (``QUEUE_ERROR``) a second queued background job of a function submitted without a
unique key: HQ's own submits, Perl's ``Gearman::Client`` (libgearman clients always send
one). Made here without it (an ordinary index for gearmand's deletes), such jobs are
accepted; the first of them to finish deletes the others' rows too (gearmand deletes by
key), so they survive a restart only until then. An existing table loses the constraint.

Django-free: ``scripts/run.sh`` runs ``python -m jobs.gearmand_queue URL [TABLE]`` before it
starts gearmand.
"""

from __future__ import annotations

import sys

import psycopg
from psycopg import sql

TABLE = "gearmand_queue"


def prepare(conninfo: str, table: str = TABLE) -> None:
    name = sql.Identifier(table)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (unique_key VARCHAR(64), function_name "
            "VARCHAR(255), priority INTEGER, data BYTEA, when_to_run INTEGER)").format(name))
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (unique_key, function_name)")
                     .format(sql.Identifier(f"{table}_key"), name))
        rows = conn.execute("SELECT conname FROM pg_constraint WHERE contype = 'u' "
                            "AND conrelid = %s::regclass", (table,)).fetchall()
        for (constraint,) in rows:
            conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                name, sql.Identifier(constraint)))


if __name__ == "__main__":
    prepare(sys.argv[1], *(sys.argv[2:3] or [TABLE]))
