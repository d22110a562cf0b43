"""Retention: history older than ``HQ_EVENT_RETENTION_DAYS`` leaves the database.

- Events go a day at a time: each day's partition of ``jobs_jobevent`` is dropped whole
  once the whole day is past the cutoff (never a ``DELETE`` on the event table, which would
  bloat it and fight the writer's COPY). The DROP waits at most ``LOCK_TIMEOUT`` for its
  lock, so it never queues the ingest writer behind it; a partition it could not drop is
  dropped by the next run. Stray events in the DEFAULT partition (replays of old captures)
  are deleted in bounded batches.
- Finished jobs (completed, failed, lost, cancelled) that ended before the cutoff, and the
  ingest batch ids written before it, are deleted in bounded batches, each its own
  transaction, so a large backlog never holds one long transaction or lock.
- Jobs still queued, running or scheduled are kept whatever their age.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from django.db import OperationalError, connection, transaction
from django.utils import timezone

from .models import FINISHED_STATES, IngestBatch, Job, JobEvent

log = logging.getLogger(__name__)

BATCH = 5000
LOCK_TIMEOUT = "2s"
PARTITION = re.compile(r"^jobs_jobevent_(\d{8})$")
DEFAULT_PARTITION = "jobs_jobevent_default"


@dataclass
class Pruned:
    """What one retention run removed (and what it could not, to retry next time)."""

    cutoff: datetime
    partitions: list[str] = field(default_factory=list)
    busy_partitions: list[str] = field(default_factory=list)
    stray_events: int = 0
    jobs: int = 0
    batch_ids: int = 0

    def summary(self) -> str:
        busy = f", {len(self.busy_partitions)} busy (next run)" if self.busy_partitions else ""
        return (f"before {self.cutoff:%Y-%m-%d %H:%M} UTC: {len(self.partitions)} event "
                f"partitions dropped{busy}, {self.stray_events} stray events, "
                f"{self.jobs} jobs, {self.batch_ids} batch ids deleted")


def cutoff_for(days: int, now: datetime | None = None) -> datetime:
    return (now or timezone.now()) - timedelta(days=days)


def apply_retention(*, days: int, now: datetime | None = None, batch: int = BATCH,
                    progress: Callable[[str], None] | None = None) -> Pruned:
    """Remove what is older than ``days`` days; ``progress`` is told each step."""
    if days < 1:
        raise ValueError("retention must be at least one day")
    say = progress or (lambda _text: None)
    pruned = Pruned(cutoff_for(days, now))
    for name in event_partitions_before(pruned.cutoff.date()):
        (pruned.partitions if _drop_partition(name) else pruned.busy_partitions).append(name)
        say(f"event partition {name}: {'dropped' if name in pruned.partitions else 'busy'}")
    pruned.stray_events = _in_batches(_delete_stray_events, pruned.cutoff, batch, say,
                                      "stray events")
    pruned.jobs = _in_batches(_delete_jobs, pruned.cutoff, batch, say, "finished jobs")
    pruned.batch_ids = _in_batches(_delete_batch_ids, pruned.cutoff, batch, say, "batch ids")
    log.info("retention (%d days): %s", days, pruned.summary())
    return pruned


def event_partitions_before(day: date) -> list[str]:
    """Day partitions of the event table whose whole day lies before ``day``, oldest first."""
    days = _partition_days()
    return sorted((n for n, d in days.items() if d < day), key=days.__getitem__)


def _partition_days() -> dict[str, date]:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass", [JobEvent._meta.db_table])
        names = [row[0] for row in cur.fetchall()]
    return {name: datetime.strptime(m.group(1), "%Y%m%d").date()
            for name in names if (m := PARTITION.match(name))}


def _drop_partition(name: str) -> bool:
    if not PARTITION.match(name):  # only ever our own day partitions
        raise ValueError(f"not an event partition: {name!r}")
    try:
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            cur.execute(f'DROP TABLE IF EXISTS "{name}"')
        return True
    except OperationalError as exc:  # lock_timeout: the writer holds the table; next run
        log.warning("retention: could not drop %s now (%s)", name, str(exc).strip())
        return False


def _in_batches(step: Callable[[datetime, int], int], cutoff: datetime, batch: int,
                say: Callable[[str], None], what: str) -> int:
    total = 0
    while True:
        with transaction.atomic():
            n = step(cutoff, batch)
        total += n
        if n:
            say(f"{what}: {total:,} deleted")
        if n < batch:
            return total


def _delete_stray_events(cutoff: datetime, batch: int) -> int:
    with connection.cursor() as cur:
        cur.execute(
            f"DELETE FROM {DEFAULT_PARTITION} WHERE ctid IN ("
            f"SELECT ctid FROM {DEFAULT_PARTITION} WHERE at < %s LIMIT %s)", [cutoff, batch])
        return cur.rowcount


def _delete_jobs(cutoff: datetime, batch: int) -> int:
    """Finished jobs that ended before the cutoff (by the finished_at index), and finished
    jobs with no end time that were submitted before it."""
    finished = [str(s) for s in FINISHED_STATES]
    ended = Job.objects.filter(finished_at__lt=cutoff, state__in=finished)
    undated = Job.objects.filter(finished_at__isnull=True, submitted_at__lt=cutoff,
                                 state__in=finished)
    ids = list(ended.values_list("id", flat=True)[:batch])
    if len(ids) < batch:
        ids += list(undated.values_list("id", flat=True)[: batch - len(ids)])
    if not ids:
        return 0
    Job.objects.filter(retry_of_id__in=ids).update(retry_of=None)
    return _delete_ids(Job._meta.db_table, ids)


def _delete_batch_ids(cutoff: datetime, batch: int) -> int:
    ids = list(IngestBatch.objects.filter(written_at__lt=cutoff)
               .values_list("id", flat=True)[:batch])
    if not ids:
        return 0
    return _delete_ids(IngestBatch._meta.db_table, ids)


def _delete_ids(table: str, ids: list[Any]) -> int:
    with connection.cursor() as cur:
        cur.execute(f'DELETE FROM "{table}" WHERE id = ANY(%s)', [ids])
        return cur.rowcount


def storage() -> dict[str, object]:
    """What the overview shows about history: the oldest day kept and the database's size."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_database_size(current_database())")
        row = cur.fetchone()
    days = sorted(_partition_days().values())
    return {"database_bytes": int(row[0]) if row else 0,
            "oldest_event_day": days[0] if days else None}
