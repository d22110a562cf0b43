"""Columns declared once, and the COPY and staging SQL generated from them.

A :class:`Column` is a name and its Postgres type. Ingest takes them from where each table
is already declared: a Django model's fields (:func:`field_column`), or, for a table no
model describes (the staging table of job deltas), a dataclass whose field annotations
carry a Postgres type (``function: Varchar | None``, read by :func:`dataclass_columns`).
The COPY column lists, the types of a binary COPY and the ``CREATE TEMP TABLE`` are then
built from those columns with :mod:`psycopg.sql`, never by formatting strings.

Django-free, so ``jobs/fold.py`` stays pure Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, get_args, get_origin, get_type_hints

from psycopg import sql

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models import Field


class Column(NamedTuple):
    name: str
    type: str  # as in DDL: "bigint", "varchar(255)", "timestamp with time zone"


@dataclass(frozen=True, slots=True)
class PgType:
    """Annotation metadata: the Postgres type of a dataclass field (see the aliases below)."""

    name: str


Bigint = Annotated[int, PgType("bigint")]
Integer = Annotated[int, PgType("integer")]
Boolean = Annotated[bool, PgType("boolean")]
Varchar = Annotated[str, PgType("varchar")]
Text = Annotated[str, PgType("text")]
Bytea = Annotated[bytes, PgType("bytea")]
Timestamptz = Annotated[datetime, PgType("timestamptz")]


def field_column(field: Field[Any, Any], connection: BaseDatabaseWrapper) -> Column:
    """The column a Django model field is stored in (a foreign key: ``<name>_id``)."""
    db_type = field.db_type(connection)
    if field.column is None or db_type is None:
        raise TypeError(f"{field} has no column")
    return Column(field.column, db_type)


def dataclass_columns(cls: type, *, skip: Iterable[str] = ()) -> tuple[Column, ...]:
    """A column per field of a dataclass, in field order, typed by its :class:`PgType`."""
    hints = get_type_hints(cls, include_extras=True)
    skipped = set(skip)
    columns = []
    for f in fields(cls):
        if f.name in skipped:
            continue
        pg_type = _pg_type(hints[f.name])
        if pg_type is None:
            raise TypeError(f"{cls.__name__}.{f.name} has no Postgres type in its annotation")
        columns.append(Column(f.name, pg_type))
    return tuple(columns)


def _pg_type(hint: object) -> str | None:
    if get_origin(hint) is Annotated:
        return next((m.name for m in hint.__metadata__ if isinstance(m, PgType)), None)  # type: ignore[attr-defined]
    for arg in get_args(hint):  # `Varchar | None`
        found = _pg_type(arg)
        if found is not None:
            return found
    return None


def column_list(columns: Sequence[Column]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)


def copy_types(columns: Sequence[Column]) -> tuple[str, ...]:
    """The type names a binary COPY is told (``Copy.set_types``): no ``(n)`` modifiers."""
    return tuple(c.type.split("(", 1)[0] for c in columns)


def copy_from_stdin(table: str, columns: Sequence[Column]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), column_list(columns))


def create_temp_table(table: str, columns: Sequence[Column]) -> sql.Composed:
    """A session's staging table, emptied by every commit."""
    definitions = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type)) for c in columns)
    return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
        sql.Identifier(table), definitions)
