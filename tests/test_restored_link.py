"""The event writer links a job gearmand restored after a restart (first seen at its
assignment, under a new boot) to its earlier record: same server, function, payload and
unique key (or none on one side), pairs equal candidates oldest first, and links nothing
else. Real Postgres through the writer, events as the tracker emits them."""

from __future__ import annotations

import time
from typing import Any

import pytest

from broker.tracker import Event
from jobs import restored
from jobs.models import Job, State
from jobs.reconcile import ENDED_UNSEEN
from tests.support.ingest import CLIENT, WORKER, WriterFactory

pytestmark = pytest.mark.django_db(transaction=True)

OLD, NEW = "100", "200"
RESTART = "gearmand restarted (pid changed)"


def submit(handle: str, payload: bytes, *, unique: str = "", background: bool = True,
           function: str = "resize", ts: float) -> Event:
    return Event("submitted", OLD, handle, ts, CLIENT, function=function, unique=unique,
                 priority="normal", background=background, data=payload, size=len(payload))


def lost(handle: str, ts: float, why: str = RESTART) -> Event:
    return Event("lost", OLD, handle, ts, detail=why)


def taken(handle: str, payload: bytes, *, unique: str | None, ts: float,
          function: str = "resize", boot: str = NEW) -> Event:
    return Event("started", boot, handle, ts, WORKER, function=function, unique=unique,
                 worker="w1", data=payload, size=len(payload))


def row(server: str, boot: str, handle: str) -> Job:
    return Job.objects.get(server__name=server, boot__token=boot, handle=handle)


def write(writer: Any, *events: Event) -> None:
    for e in events:
        writer.emit(e)
    writer.flush()


def test_restored_jobs_link_to_their_earlier_records(make_writer: WriterFactory,
                                                     writer_server: str) -> None:
    t = float(int(time.time())) - 60
    writer = make_writer()
    server = writer_server
    write(writer,
          submit("H:x:7", b"a.png", unique="u-a", ts=t),
          submit("H:x:8", b"b.png", ts=t),  # a client that sent no unique key
          submit("H:x:9", b"c.png", unique="u-c", ts=t),
          submit("H:x:10", b"d.png", unique="u-d", ts=t),
          submit("H:x:11", b"e.png", unique="u-e", background=False, ts=t),
          submit("H:x:12", b"f.png", unique="u-f", ts=t))
    write(writer, *(lost(f"H:x:{n}", t + 1) for n in (7, 8, 9, 11)),
          lost("H:x:10", t + 1, why=ENDED_UNSEEN), lost("H:x:12", t + 1))
    write(writer,
          taken("H:x:1", b"a.png", unique="u-a", ts=t + 5),  # same key
          taken("H:x:2", b"b.png", unique="gearmand-made-this", ts=t + 5),  # none before
          taken("H:x:3", b"c.png", unique=None, ts=t + 5),  # a GRAB_JOB worker: no key
          taken("H:x:4", b"d.png", unique="u-d", ts=t + 5),  # lost for another reason
          taken("H:x:5", b"e.png", unique="u-e", ts=t + 5),  # foreground: not persisted
          taken("H:x:6", b"f.png!", unique="u-f", ts=t + 5))  # another payload
    pairs = {(j.handle, j.restored_from.handle)
             for j in Job.objects.filter(server__name=server, restored_from__isnull=False)
             .select_related("restored_from")}
    assert pairs == {("H:x:1", "H:x:7"), ("H:x:2", "H:x:8"), ("H:x:3", "H:x:9")}
    for old, new in (("H:x:7", "H:x:1"), ("H:x:8", "H:x:2"), ("H:x:9", "H:x:3")):
        earlier = row(server, OLD, old)
        assert earlier.state == State.RESTORED and earlier.error.endswith(f"as {new}")
        assert "restored" in (earlier.retry_refusal(redacted=False) or "")  # no 2nd run
    assert [row(server, OLD, f"H:x:{n}").state for n in (10, 11, 12)] == ["lost"] * 3
    assert writer.store.restored.linked == 3


def test_equal_candidates_pair_oldest_first_and_a_submitted_job_is_never_linked(
        make_writer: WriterFactory, writer_server: str) -> None:
    t = float(int(time.time())) - 60
    writer = make_writer()
    server = writer_server
    write(writer, *(submit(f"H:x:{n}", b"same", ts=t + n) for n in (20, 21, 22)))
    write(writer, *(lost(f"H:x:{n}", t + 30) for n in (20, 21, 22)))
    # a client submits the same again after the restart: a new job, not a restored one
    write(writer, Event("submitted", NEW, "H:x:4", t + 40, CLIENT, function="resize",
                        unique="", priority="normal", background=True, data=b"same",
                        size=4),
          taken("H:x:4", b"same", unique=None, ts=t + 41))
    assert not row(server, NEW, "H:x:4").restored_from_id
    write(writer, taken("H:x:1", b"same", unique=None, ts=t + 42),
          taken("H:x:2", b"same", unique=None, ts=t + 42))
    assert (row(server, NEW, "H:x:1").restored_from, row(server, NEW, "H:x:2").restored_from) \
        == (row(server, OLD, "H:x:20"), row(server, OLD, "H:x:21"))
    assert row(server, OLD, "H:x:22").state == State.LOST  # gearmand gave back two
    assert [j.handle for j in restored.history(row(server, OLD, "H:x:20"))] == [
        "H:x:20", "H:x:1"]
