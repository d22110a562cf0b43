"""No batch, bad value, corrupt file or outage stops the ingest writer or loses history.

Against the real test database. Rows Postgres refuses (a NUL in a handle, a function
longer than its column, a progress number past bigint) are quarantined one by one while
the rest of their batch is written; spooled batches with such rows are not replayed
forever; a corrupt spool file is moved aside; during an outage queued events go to disk
(the database is reached through a TCP relay the test switches off and on: the shared
Postgres itself is never stopped), the spool is bounded, and when the database comes back
every event is written once, in order.
"""

from __future__ import annotations

import errno
import json
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from broker.tracker import Event
from jobs.batches import Batch
from jobs.ingest import EventWriter, conninfo_from_settings
from jobs.models import Job, JobEvent
from jobs.spool import Spool
from jobs.tap_health import assess
from tests.pg_relay import Relay
from tests.support.ingest import CLIENT, DOWN, WORKER, WriterFactory
from tests.support.stack import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

BOOT = "5151"


# ------------------------------------------------------------------------------ helpers


@pytest.fixture
def server(writer_server: str) -> str:
    return writer_server


def t0() -> float:
    return float(int(time.time()))


def submitted(ts: float, handle: str, **fields: Any) -> Event:
    base: dict[str, Any] = {"function": "resize", "unique": "", "priority": "normal",
                            "background": True, "data": b"img", "size": 3}
    return Event("submitted", BOOT, handle, ts, CLIENT, **{**base, **fields})


def started(ts: float, handle: str) -> Event:
    return Event("started", BOOT, handle, ts, WORKER, worker="w1")


def completed(ts: float, handle: str) -> Event:
    return Event("completed", BOOT, handle, ts, WORKER, worker="w1", data=b"ok", size=2)


def status(ts: float, handle: str, numerator: int) -> Event:
    return Event("status", BOOT, handle, ts, WORKER, worker="w1", numerator=numerator,
                 denominator=100)


def job_of(ts: float, handle: str) -> list[Event]:
    return [submitted(ts, handle), started(ts + 0.1, handle), completed(ts + 0.2, handle)]


def emit_all(writer: EventWriter, events: list[Event]) -> None:
    for event in events:
        writer.emit(event)


def handles(server: str) -> set[str]:
    return set(Job.objects.filter(server__name=server).values_list("handle", flat=True))


def event_count(server: str) -> int:
    return JobEvent.objects.filter(server__name=server).count()


def quarantined(spool_dir: Path, server: str) -> list[dict[str, Any]]:
    folder = spool_dir / server / "quarantine"
    lines: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


# --------------------------------------------------------------- rows Postgres refuses

BAD_EVENTS = {
    "nul in the handle": lambda ts: submitted(ts, "H:x:\x00evil"),
    "300-char function": lambda ts: submitted(ts, "H:x:long", function="f" * 300),
    "numerator of 2^63": lambda ts: status(ts, "H:x:2", 2**63),
}


@pytest.mark.parametrize("case", list(BAD_EVENTS))
def test_bad_row_is_quarantined_and_the_rest_of_its_batch_written(
    case: str, make_writer: WriterFactory, server: str, spool_dir: Path
) -> None:
    ts = t0()
    bad = BAD_EVENTS[case](ts + 0.5)
    writer = make_writer()
    emit_all(writer, [*job_of(ts, "H:x:1"), *job_of(ts, "H:x:2"), bad,
                      *job_of(ts + 1, "H:x:3")])
    writer.flush()

    assert {"H:x:1", "H:x:2", "H:x:3"} <= handles(server)
    assert Job.objects.get(server__name=server, handle="H:x:3").state == "completed"
    assert event_count(server) == 9  # every good event, none of the bad one
    rows = quarantined(spool_dir, server)
    assert len(rows) == 1
    assert rows[0]["row"]["handle"] == bad.handle and rows[0]["row"]["kind"] == bad.kind
    assert rows[0]["error"]  # what Postgres (or the COPY) said
    stats = writer.stats()
    assert stats["quarantined_events"] == 1 and stats["events_written"] == 9
    assert len(writer.spool) == 0  # a data error is not "Postgres is down"

    # the stream goes on: the next batch is written normally
    emit_all(writer, job_of(ts + 2, "H:x:4"))
    writer.flush()
    assert "H:x:4" in handles(server) and event_count(server) == 12

    # and a restarted writer has nothing to replay
    again = make_writer()
    again.flush()
    assert event_count(server) == 12 and len(quarantined(spool_dir, server)) == 1


def test_epoch_past_year_9999_is_a_job_without_a_schedule(
    make_writer: WriterFactory, server: str, spool_dir: Path
) -> None:
    ts = t0()
    writer = make_writer()
    emit_all(writer, [submitted(ts, "H:x:1", epoch=999999999999), *job_of(ts, "H:x:2")])
    writer.flush()
    j = Job.objects.get(server__name=server, handle="H:x:1")
    assert (j.state, j.scheduled_for) == ("queued", None)
    assert "H:x:2" in handles(server)
    assert quarantined(spool_dir, server) == []


def test_event_with_an_impossible_time_is_quarantined_before_the_batch(
    make_writer: WriterFactory, server: str, spool_dir: Path
) -> None:
    ts = t0()
    writer = make_writer()
    emit_all(writer, [*job_of(ts, "H:x:1"), submitted(1e20, "H:x:odd")])
    writer.flush()
    assert handles(server) == {"H:x:1"}
    rows = quarantined(spool_dir, server)
    assert [r["event"]["handle"] for r in rows] == ["H:x:odd"]
    assert writer.stats()["quarantined_events"] == 1


def test_writer_thread_survives_bad_batches(
    make_writer: WriterFactory, server: str, spool_dir: Path
) -> None:
    ts = t0()
    writer = make_writer(flush_ms=20)
    writer.start()
    for i, make_bad in enumerate(BAD_EVENTS.values()):
        emit_all(writer, [make_bad(ts + i), *job_of(ts + i, f"H:ok:{i}")])
        wait_for(lambda i=i: f"H:ok:{i}" in handles(server), message=f"batch {i} written")
    emit_all(writer, [submitted(ts, "H:x:epoch", epoch=999999999999)])
    wait_for(lambda: "H:x:epoch" in handles(server), message="the epoch job")
    stats = writer.stats()
    assert stats["writer_alive"] and stats["state"] == "running"
    assert stats["quarantined_events"] == 3 and len(quarantined(spool_dir, server)) == 3


def test_spooled_batch_with_a_bad_row_is_written_once_and_not_replayed_again(
    make_writer: WriterFactory, server: str, spool_dir: Path
) -> None:
    ts = t0()
    down = make_writer(DOWN)
    emit_all(down, [*job_of(ts, "H:x:1"), submitted(ts, "H:x:\x00"), *job_of(ts, "H:x:2")])
    with pytest.raises(psycopg.OperationalError):
        down.flush()
    assert len(down.spool) == 1

    writer = make_writer()
    writer.flush()
    assert handles(server) == {"H:x:1", "H:x:2"} and event_count(server) == 6
    assert len(writer.spool) == 0 and len(quarantined(spool_dir, server)) == 1

    third = make_writer()
    third.flush()
    assert len(third.spool) == 0 and event_count(server) == 6
    assert len(quarantined(spool_dir, server)) == 1


def test_a_replay_after_a_crash_mid_split_inserts_nothing_twice(
    make_writer: WriterFactory, server: str, spool_dir: Path
) -> None:
    """The halves of a split batch have ids derived from it: replaying the batch (its
    spool file outlived the crash) finds them written."""
    ts = t0()
    down = make_writer(DOWN)
    emit_all(down, [*job_of(ts, "H:x:1"), status(ts + 0.3, "H:x:1", 2**63),
                    *job_of(ts, "H:x:2")])
    with pytest.raises(psycopg.OperationalError):
        down.flush()
    _name, batch = down.spool.oldest() or ("", None)
    assert batch is not None
    make_writer().flush()
    down.spool.put(batch, events=len(batch.rows))  # as if the file had not been removed
    writer = make_writer()
    writer.flush()
    assert event_count(server) == 6 and writer.stats()["duplicates"] > 0
    assert len(quarantined(spool_dir, server)) == 2  # quarantined again, written once


def test_a_database_without_the_tables_is_an_outage_not_bad_data(
    make_writer: WriterFactory, server: str, spool_dir: Path
) -> None:
    """A missing table (or privilege) is no row's fault: the batch waits in the spool
    instead of every row being quarantined."""
    params = conninfo_to_dict(conninfo_from_settings())
    unmigrated = make_conninfo(**{**params, "dbname": "postgres"})  # exists, no HQ tables
    ts = t0()
    writer = make_writer(unmigrated)
    emit_all(writer, job_of(ts, "H:x:1"))
    with pytest.raises(psycopg.ProgrammingError):
        writer.flush()
    assert len(writer.spool) == 1 and quarantined(spool_dir, server) == []

    make_writer().flush()
    assert handles(server) == {"H:x:1"} and event_count(server) == 3


# ------------------------------------------------------------------------ corrupt spool


def test_corrupt_spool_files_are_moved_aside_and_later_batches_written(
    make_writer: WriterFactory, server: str, spool_dir: Path
) -> None:
    ts = t0()
    down = make_writer(DOWN)
    emit_all(down, job_of(ts, "H:x:1"))
    with pytest.raises(psycopg.OperationalError):
        down.flush()
    folder = spool_dir / server
    (folder / "000000000007-3-0.batch").write_bytes(b"\x80\x05not a pickle at all")
    (folder / "000000000008-1-0.batch").write_bytes(pickle.dumps({"not": "a batch"}))
    down2 = make_writer(DOWN)  # reads the directory again
    emit_all(down2, job_of(ts + 1, "H:x:2"))
    with pytest.raises(psycopg.OperationalError):
        down2.flush()
    down2._spool_queue()
    assert len(down2.spool) == 4

    writer = make_writer()
    emit_all(writer, job_of(ts + 2, "H:x:3"))
    writer.flush()
    assert handles(server) == {"H:x:1", "H:x:2", "H:x:3"}
    aside = sorted(p.name for p in (folder / "quarantine").glob("*.corrupt"))
    assert aside == ["000000000007-3-0.batch.corrupt", "000000000008-1-0.batch.corrupt"]
    assert writer.stats()["corrupt_spool_files"] == 2 and len(writer.spool) == 0
    again = make_writer()
    again.flush()  # nothing left to trip over
    assert event_count(server) == 9


# ---------------------------------------------------------------------------- outages

@pytest.fixture
def relay() -> Iterator[Relay]:
    r = Relay.to(conninfo_from_settings())
    yield r
    r.down()


def through(relay: Relay) -> str:
    return relay.conninfo(conninfo_from_settings(), connect_timeout="2")


def test_outage_spills_to_disk_and_every_event_is_written_once_in_order(
    make_writer: WriterFactory, server: str, relay: Relay
) -> None:
    ts = t0()
    relay.up()
    writer = make_writer(through(relay), batch=100, flush_ms=20, queue_max=400)
    writer.start()
    writer.emit(submitted(ts, "H:x:1"))
    wait_for(lambda: handles(server) == {"H:x:1"}, message="the first job")

    relay.down()  # Postgres unreachable, the writer's connection cut
    total = 3000
    for i in range(1, total + 1):  # progress 1..3000 of one job, in order
        writer.emit(status(ts + i / 1000, "H:x:1", i))
    wait_for(lambda: writer.stats()["spool_events"] >= total - 100,
             message="queued events spilled to the spool")
    stats = writer.stats()
    assert stats["queued"] <= writer.queue_max and not stats["db_up"]
    assert stats["spool_batches"] >= 29 and stats["db_errors"] >= 1
    assert not assess(server, {"writer": stats}, time.time(), time.time()).healthy

    relay.up()
    wait_for(lambda: writer.stats()["events_written"] == total + 1, timeout=60,
             message="every event written when the database is back")
    assert event_count(server) == total + 1  # once each
    j = Job.objects.get(server__name=server, handle="H:x:1")
    assert j.progress_numerator == total  # the batches were folded in order
    assert writer.stats()["spool_batches"] == 0 and writer.stats()["db_up"]


def test_kill_during_an_outage_keeps_the_events_on_disk(
    make_writer: WriterFactory, server: str, relay: Relay
) -> None:
    ts = t0()
    writer = make_writer(through(relay), batch=50, flush_ms=20)  # relay never up
    writer.start()
    for i in range(120):
        writer.emit(submitted(ts + i / 1000, f"H:x:{i}"))
    wait_for(lambda: writer.stats()["spool_events"] == 120, message="all 120 on disk")
    assert writer.queued == 0  # the process could be killed now: nothing only in memory
    writer.stop(timeout=5)
    relay.up()
    fresh = make_writer(through(relay))
    assert fresh.spool.events() == 120
    fresh.flush()
    assert len(handles(server)) == 120


def test_spool_bound_drops_the_oldest_batches_and_counts_them(
    make_writer: WriterFactory, server: str, spool_dir: Path
) -> None:
    ts = t0()
    probe = make_writer(DOWN, batch=100)
    emit_all(probe, [submitted(ts, f"H:p:{i}") for i in range(100)])
    with pytest.raises(psycopg.OperationalError):
        probe.flush()
    one = probe.spool.size_bytes()  # the size of one 100-event batch on disk
    probe.spool.remove(probe.spool.oldest()[0])  # type: ignore[index]

    writer = make_writer(DOWN, batch=100, spool_max=int(one * 3.5))
    writer.start()
    emit_all(writer, [submitted(ts + i / 1000, f"H:x:{i}") for i in range(1000)])
    wait_for(lambda: writer.stats()["spool_dropped_events"] >= 700,
             message="the oldest batches dropped")
    stats = writer.stats()
    assert stats["spool_batches"] == 3 and stats["spool_events"] == 300
    assert stats["spool_bytes"] <= stats["spool_max"]
    assert stats["spool_dropped_events"] == 700 and stats["queued"] == 0
    oldest = writer.spool.oldest_at()
    assert oldest is not None and oldest >= ts + 0.7 - 0.01  # the newest were kept
    verdict = assess(server, {"writer": stats}, time.time(), time.time())
    assert "spool_full" in verdict.codes and "% full" in verdict.text


def test_a_full_disk_drops_the_oldest_spooled_batches_not_the_newest(
    make_writer: WriterFactory, server: str, spool_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The spool's disk fills before HQ_SPOOL_MAX: room is made as for the bound (the
    oldest go, counted), so the events the outage ends with are the ones kept."""
    ts = t0()
    writer = make_writer(DOWN, batch=100)
    room = 3  # the disk holds three batch files
    real_write = Spool._write

    def write_on_a_small_disk(spool: Spool[Any], name: str, batch: Any) -> int:
        if len(spool) >= room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(spool, name, batch)

    monkeypatch.setattr(Spool, "_write", write_on_a_small_disk)
    writer.start()
    emit_all(writer, [submitted(ts + i / 1000, f"H:x:{i}") for i in range(1000)])
    wait_for(lambda: writer.stats()["spool_dropped_events"] >= 700,
             message="the oldest batches dropped")
    stats = writer.stats()
    assert stats["spool_batches"] == 3 and stats["spool_events"] == 300
    assert stats["spool_dropped_events"] == 700 and stats["lost_events"] == 0
    oldest = writer.spool.oldest_at()
    assert oldest is not None and oldest >= ts + 0.7 - 0.01  # the newest were kept


def test_a_write_error_other_than_a_full_disk_is_not_taken_for_one(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool: Spool[list[int]] = Spool(spool_dir)
    spool.put([1], events=1)

    def unwritable(_spool: Spool[Any], _name: str, _batch: Any) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Spool, "_write", unwritable)
    with pytest.raises(PermissionError):
        spool.put([2], events=1)
    assert len(spool) == 1  # nothing dropped for an error that room would not cure


def test_batches_spilled_to_keep_memory_bounded_are_written_before_newer_ones(
    make_writer: WriterFactory, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More than ``queue_max`` events wait with Postgres up: the writer spills the oldest
    to the spool to bound memory, and must still write every batch in event order, or a
    job's `completed` written before its `started` leaves it `running` for good."""
    ts = t0()
    writer = make_writer(batch=10, queue_max=10)
    events = [submitted(ts, "H:o:1")]
    events += [submitted(ts + i / 1000, f"H:o:{i + 1}") for i in range(1, 12)]
    events.append(started(ts + 0.02, "H:o:1"))  # in the second batch: spilled
    events += [submitted(ts + (20 + i) / 1000, f"H:o:{i + 20}") for i in range(20)]
    events.append(completed(ts + 0.05, "H:o:1"))  # in the fourth batch
    events += [submitted(ts + (50 + i) / 1000, f"H:o:{i + 50}") for i in range(10)]
    written: list[float] = []
    real_write = writer.store.write

    def recording(batch: Batch) -> Any:
        written.append(batch.rows[0].at.timestamp())
        return real_write(batch)

    monkeypatch.setattr(writer.store, "write", recording)
    emit_all(writer, events)
    writer.flush(bounded=True)
    assert writer.stats()["spooled_batches"] >= 2  # the queue bound did spill
    assert written == sorted(written) and len(written) == 5
    assert Job.objects.get(server__name=server, handle="H:o:1").state == "completed"


def test_queued_payload_bytes_bound_memory_too(make_writer: WriterFactory, server: str) -> None:
    """Far fewer events than ``queue_max`` wait, but their payloads are large: past
    ``queue_bytes_max`` whole batches go to the spool all the same (and every job is still
    written, in order); small events under both bounds stay in memory."""
    ts = t0()
    big = make_writer(batch=10, queue_max=1000, queue_bytes_max=20_000)
    emit_all(big, [submitted(ts + i / 1000, f"H:m:{i}", data=b"x" * 1000, size=1000)
                   for i in range(60)])
    big.flush(bounded=True)
    assert big.stats()["spooled_batches"] >= 2 and big.stats()["events_written"] == 60
    assert Job.objects.filter(server__name=server, handle__startswith="H:m:").count() == 60
    small = make_writer(batch=10, queue_max=1000, queue_bytes_max=20_000)
    emit_all(small, [submitted(ts + i / 1000, f"H:s:{i}") for i in range(60)])
    small.flush(bounded=True)
    assert small.stats()["spooled_batches"] == 0 and small.stats()["events_written"] == 60


def test_the_writer_retries_a_vanished_database_at_least_every_second(
    make_writer: WriterFactory,
) -> None:
    writer = make_writer(DOWN, batch=10)
    emit_all(writer, [submitted(t0(), "H:b:1")])
    for _ in range(8):  # eight failures in a row
        writer._cycle(stopping=False)
        writer._retry_at = 0.0
    assert writer._backoff <= 1.0


def test_writer_connection_has_bounded_connect_and_statement_times() -> None:
    params = conninfo_to_dict(conninfo_from_settings())
    assert params["connect_timeout"] == "5"
    with psycopg.connect(conninfo_from_settings()) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)


def test_pending_since_is_the_oldest_event_not_yet_in_postgres(
    make_writer: WriterFactory,
) -> None:
    ts = t0()
    writer = make_writer(DOWN, batch=2)
    assert writer.pending_since() is None
    emit_all(writer, [submitted(ts + i, f"H:p:{i}") for i in range(5)])
    assert writer.pending_since() == ts  # queued
    with pytest.raises(psycopg.OperationalError):
        writer.flush()
    writer._spill(everything=True)
    assert writer.queued == 0 and writer.pending_since() == ts  # spooled
