"""Hostile packets all the way into Postgres: the values the tracker lets out are storable
as they are, so the writer records every job (nothing refused, nothing quarantined).

The one broker test that needs the database: it proves the boundary against the real
columns rather than against their lengths copied into a test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from broker.protocol import req, res
from broker.tracker import Tracker

from .wire import FN, T, key

if TYPE_CHECKING:
    from jobs.ingest import EventWriter

Recorded = tuple[str, Tracker, "EventWriter"]
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[Recorded]:
    from jobs.ingest import EventWriter, conninfo_from_settings

    server = f"hostile-{uuid.uuid4().hex[:10]}"
    writer = EventWriter(server, conninfo_from_settings(), spool_dir=tmp_path / "spool")
    tracker = Tracker(writer.emit, boot="31337\0" + "9" * 100)
    yield server, tracker, writer
    writer.stop(timeout=0)


def test_hostile_values_reach_postgres_storable(recorded: Recorded) -> None:
    from jobs.models import Job, JobEvent

    server, tracker, writer = recorded
    client, worker = key(5001), key(5002)
    for k in (client, worker):
        tracker.opened(k, 1.0, from_start=True)
    long_a, long_b = b"H:" + b"h" * 400 + b":1", b"H:" + b"h" * 400 + b":2"
    steps = [
        (worker, True, req(T.SET_CLIENT_ID, b"w\0" + b"\xff" * 300)),
        (client, True, req(T.SUBMIT_JOB_EPOCH, b"fn\0\xfe" * 100, b"u\0", b"999999999999",
                           b"\0payload")),
        (client, False, res(T.JOB_CREATED, long_a)),
        (client, True, req(T.SUBMIT_JOB_BG, FN, b"", b"p")),
        (client, False, res(T.JOB_CREATED, long_b)),
        (worker, False, res(T.JOB_ASSIGN_UNIQ, long_a, b"fn\0\xfe" * 100, b"u\0", b"x")),
        (worker, True, req(T.WORK_STATUS, long_a, str(2**64).encode(), b"-1")),
        (worker, True, req(T.WORK_COMPLETE, long_a, b"\0result\xff")),
    ]
    for n, (k, from_peer, packet) in enumerate(steps):
        tracker.packet(k, packet, 1_700_000_000.0 + n, from_peer)
    writer.flush()
    stats = writer.stats()
    assert stats["events_written"] == tracker.counters["events"] == 5
    assert stats.get("quarantined_events", 0) == 0 and stats["db_errors"] == 0

    jobs = {j.handle: j for j in Job.objects.filter(server__name=server)}
    assert len(jobs) == 2 and all(len(h) <= 255 for h in jobs)
    done = next(j for j in jobs.values() if j.state == "completed")
    queued = next(j for j in jobs.values() if j.state == "queued")
    assert done.handle != queued.handle and done.handle[:200] == queued.handle[:200]
    assert done.function.startswith("fn\\x00\\xfe") and len(done.function) == 255
    assert done.worker.startswith("w\\x00\\xff") and done.scheduled_for is None
    assert done.progress_numerator is None and done.progress_denominator == -1
    token = done.boot.token  # bounded for Boot.token, with room for a ".N" suffix
    assert token.startswith("31337\\x0099") and token.endswith("…") and len(token) == 40
    submitted = JobEvent.objects.get(server__name=server, handle=done.handle, kind="submitted")
    assert "epoch" in submitted.detail and "ignored" in submitted.detail
