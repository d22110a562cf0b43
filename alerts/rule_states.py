"""Writing rule states in bulk, the way an evaluation tick needs it.

The first tick after rules are added creates a state per rule and queue (11,566 for
1,000 rules over 500 functions): through ``bulk_create`` that cost more than the rest of
the tick (a model's field preparation per value, then every value adapted one by one
into UNNEST arrays). Here the rows go to Postgres with COPY, and the states that moved
are written with one ``UPDATE … FROM unnest`` (``bulk_update``'s CASE WHEN per row per
column grows with the square of the batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.db import connection
from psycopg import sql

from .models import RuleState, StateMachine

#: the columns a new state is written with: one list, the COPY statement built from it
COLUMNS = ("rule_id", "server_id", "function", "state", "since", "value", "evaluated_at")
COPY_SQL = sql.SQL("COPY {table} ({columns}) FROM STDIN").format(
    table=sql.Identifier(RuleState._meta.db_table),
    columns=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))
TYPES = ("int8", "int8", "text", "text", "timestamptz", "float8", "timestamptz")
UPDATE_SQL = sql.SQL("""
    UPDATE {table} AS s
    SET state = u.state, since = u.since, value = u.value, evaluated_at = u.evaluated_at
    FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[], %s::float8[],
                %s::timestamptz[]) AS u(id, state, since, value, evaluated_at)
    WHERE s.id = u.id""").format(table=sql.Identifier(RuleState._meta.db_table))


class TickState(StateMachine):
    """One rule state as a tick steps it: the row's columns, without a model (building
    11,566 models cost a third of a steady tick)."""

    __slots__ = ("evaluated_at", "function", "pk", "rule_id", "server_id", "since", "state",
                 "value")

    def __init__(self, pk: int | None, rule_id: int, server_id: int | None, function: str,
                 state: str, since: datetime) -> None:
        self.pk, self.rule_id, self.server_id, self.function = pk, rule_id, server_id, function
        self.state, self.since = state, since
        self.value: float | None = None  # the step writes these two
        self.evaluated_at = since


def load(rule_ids: Sequence[int]) -> dict[tuple[int, int | None, str], TickState]:
    """The states of these rules by (rule, server, function), as a tick steps them."""
    rows = (RuleState.objects.filter(rule_id__in=rule_ids)
            .values_list("id", "rule_id", "server_id", "function", "state", "since"))
    return {(rid, sid, function): TickState(pk, rid, sid, function, state, since)
            for pk, rid, sid, function, state, since in rows.iterator(chunk_size=5000)}


def insert(states: Sequence[TickState]) -> None:
    """Write new states (their ids stay unset: a tick reads them back next time)."""
    if not states:
        return
    with connection.cursor() as cur, cur.copy(COPY_SQL) as copy:
        copy.set_types(TYPES)
        for s in states:
            copy.write_row((s.rule_id, s.server_id, s.function, s.state, s.since, s.value,
                            s.evaluated_at))


def update(states: Sequence[TickState]) -> None:
    """Write the state, since, value and evaluated_at of existing states."""
    if not states:
        return
    with connection.cursor() as cur:
        cur.execute(UPDATE_SQL.as_string(cur.connection), [
            [s.pk for s in states], [s.state for s in states], [s.since for s in states],
            [None if s.value is None else float(s.value) for s in states],  # ints too
            [s.evaluated_at for s in states]])
