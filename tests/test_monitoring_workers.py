"""Worker rows from the traffic (tap facts) and their reconciliation with gearmand's list.

The end-to-end run (a PHP and a Perl worker through a capture and a proxy tap) is in
``tests/interop/test_workers_live.py``; here each rule is played on its own against Postgres.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from broker.admin import WorkerLine
from broker.workers import WorkerFact
from hq.tap.workers import SETTLE_S, WorkerSync
from monitoring.models import Worker
from monitoring.services import (
    DOWN_AFTER,
    WIRE_FD,
    apply_worker_facts,
    reconcile_polled_workers,
    record_poll,
    record_poll_failure,
)

pytestmark = pytest.mark.django_db

S, ADDR = "wk", "127.0.0.1:4730"


def _apply(*facts: WorkerFact) -> set[str]:
    return apply_worker_facts(name=S, address=ADDR, facts=list(facts)).functions


def _reconcile(lines: list[WorkerLine], at: float,
               unsettled: frozenset[tuple[str, frozenset[str]]] = frozenset()) -> None:
    reconcile_polled_workers(name=S, address=ADDR, lines=lines,
                             at=datetime.fromtimestamp(at, UTC), unsettled=unsettled)


def _rows() -> list[tuple[int, str, str, list[str]]]:
    return sorted((w.fd, w.address, w.client_id, sorted(w.functions))
                  for w in Worker.objects.filter(server__name=S))


def test_facts_create_update_and_delete_one_row_per_connection() -> None:
    now = time.time()
    assert _apply(WorkerFact("10.0.0.7:5001", "w1", ("a", "b"), now)) == {"a", "b"}
    _apply(WorkerFact("10.0.0.7:5002", "", ("a",), now))
    assert _rows() == [(WIRE_FD, "10.0.0.7:5001", "w1", ["a", "b"]),
                       (WIRE_FD, "10.0.0.7:5002", "", ["a"])]
    assert _apply(WorkerFact("10.0.0.7:5001", "w1", ("b", "c"), now + 1)) == {"a", "b", "c"}
    row = Worker.objects.get(address="10.0.0.7:5001")
    assert row.functions == ["b", "c"] and row.last_seen.timestamp() == pytest.approx(now + 1)
    assert row.connected_at.timestamp() == pytest.approx(now)
    _apply(WorkerFact("10.0.0.7:5001", "w1", ("b", "c"), now + 2, gone=True),
           WorkerFact("10.0.0.7:5002", "", (), now + 2))  # last function dropped
    assert _rows() == []


def test_the_end_of_a_connection_joined_mid_stream_ends_an_earlier_taps_row() -> None:
    now = time.time()
    _apply(WorkerFact("10.0.0.7:5001", "w1", ("a",), now - 60))  # before the tap restarted
    assert _apply(WorkerFact("10.0.0.7:5001", "", (), now, gone=True),
                  WorkerFact("10.0.0.7:5009", "", (), now, gone=True)) == {"a"}
    assert _rows() == []


def test_a_listed_worker_the_traffic_knows_keeps_its_row() -> None:
    now = time.time()
    _apply(WorkerFact("10.0.0.7:5001", "w1", ("b", "a"), now - 10))
    _reconcile([WorkerLine(40, "10.0.0.7", "w1", ("a", "b")),
                WorkerLine(41, "10.0.0.7", "-", ())], now)  # a client (no functions)
    assert _rows() == [(WIRE_FD, "10.0.0.7:5001", "w1", ["a", "b"])]
    assert Worker.objects.get().last_seen.timestamp() == pytest.approx(now)


def test_workers_only_the_list_shows_get_rows_then_go_with_the_list() -> None:
    now = time.time()
    _apply(WorkerFact("10.0.0.7:5001", "w1", ("a",), now - 10))
    lines = [WorkerLine(40, "10.0.0.7", "w1", ("a",)), WorkerLine(42, "10.0.0.9", "old", ("z",))]
    _reconcile(lines, now)
    assert _rows() == [(WIRE_FD, "10.0.0.7:5001", "w1", ["a"]), (42, "10.0.0.9", "old", ["z"])]
    _reconcile(lines[:1], now + 5)
    assert _rows() == [(WIRE_FD, "10.0.0.7:5001", "w1", ["a"])]


def test_a_traffic_row_gearmand_does_not_list_is_deleted() -> None:
    now = time.time()
    _apply(WorkerFact("10.0.0.7:5001", "w1", ("a",), now - 10))  # its close was missed
    _reconcile([], now)
    assert _rows() == []


def test_workers_the_traffic_changed_since_the_list_are_left_alone() -> None:
    now = time.time()
    _apply(WorkerFact("10.0.0.7:5003", "new", ("a",), now))  # connected after the list
    sig_new, sig_left = ("new", frozenset({"a"})), ("left", frozenset({"b"}))
    # "left" went away after the list was taken: the list still shows it
    _reconcile([WorkerLine(44, "10.0.0.7", "left", ("b",))], now - 1,
               unsettled=frozenset({sig_new, sig_left}))
    assert _rows() == [(WIRE_FD, "10.0.0.7:5003", "new", ["a"])]


def test_record_poll_leaves_worker_rows_to_the_tap_when_given_none() -> None:
    now = time.time()
    _apply(WorkerFact("10.0.0.7:5001", "w1", ("a",), now))
    record_poll(name=S, address=ADDR, pid="1", version="1.1.20", statuses=[], workers=None)
    assert len(_rows()) == 1
    record_poll(name=S, address=ADDR, pid="1", version="1.1.20", statuses=[],
                workers=[WorkerLine(40, "10.0.0.8", "w2", ("q",))])
    assert _rows() == [(40, "10.0.0.8", "w2", ["q"])]


def test_failed_polls_drop_polled_rows_and_leave_traffic_rows_to_their_connections() -> None:
    now = time.time()
    _apply(WorkerFact("10.0.0.7:5001", "w1", ("a",), now))
    record_poll(name=S, address=ADDR, pid="1", version="1.1.20", statuses=[], workers=None)
    _reconcile([WorkerLine(40, "10.0.0.7", "w1", ("a",)), WorkerLine(42, "10.0.0.9", "o", ("z",))],
               now + 1)
    for _ in range(DOWN_AFTER):
        record_poll_failure(name=S, address=ADDR, error="timed out")
    assert _rows() == [(WIRE_FD, "10.0.0.7:5001", "w1", ["a"])]


def test_sync_thread_writes_facts_and_reconciles_a_settled_list() -> None:
    sync = WorkerSync(S, ADDR, threading.Event())
    now = time.time()
    sync.fact(WorkerFact("10.0.0.7:5001", "w1", ("a",), now))
    sync.fact(WorkerFact("10.0.0.7:5002", "w2", ("b",), now))
    sync.fact(WorkerFact("10.0.0.7:5002", "w2", ("b",), now, gone=True))  # latest per peer wins
    # a list taken long enough ago to be settled, before the worker w2 left
    sync.poll([WorkerLine(40, "10.0.0.7", "w1", ("a",)), WorkerLine(41, "10.0.0.7", "w2", ("b",)),
               WorkerLine(45, "10.0.0.5", "early", ("c",))], now - SETTLE_S - 0.1)
    sync.step()
    # w1 explained by its traffic row; w2's line is older than its departure (no ghost);
    # "early" connected before HQ watched: known from the list alone
    assert _rows() == [(WIRE_FD, "10.0.0.7:5001", "w1", ["a"]), (45, "10.0.0.5", "early", ["c"])]
    assert sync.counters["worker_reconciles"] == 1 and sync.counters["worker_facts"] == 3
