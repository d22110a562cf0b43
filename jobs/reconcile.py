"""Open jobs checked against gearmand: what HQ thinks is queued or running, gearmand holds.

A job stays ``queued`` or ``running`` in HQ until an event ends it. When that event was
never recorded (the tap was down or killed with events still in memory, the capture lost
the packets, the spool's disk was full), the row would stay open for ever. gearmand's
``show jobs`` lists every job it holds, queued or running; a job it no longer holds has
ended. The tap takes that list now and then (``hq/tap/runner.py``) and, once everything it
captured before the list was taken has been written, hands it to :func:`unheld_jobs`:
each open row of the server that gearmand did not list, and that was already open well
before the list was taken, is recorded ``lost`` with the reason — through the writer, as
an ordinary event, so the job's timeline says when and why.

A job that started after the list was taken is never judged by it: rows are compared only
when their first sign of life (submit, else start, else the row's last write) is older
than the list by :data:`MARGIN_S`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import Q

from .models import Job, State

#: a job first seen less than this before gearmand's list was taken is not judged by it
MARGIN_S = 5.0
#: at most this many rows are marked per pass (the rest at the next one)
BATCH = 10_000

ENDED_UNSEEN = ("gearmand no longer holds it and HQ never saw it end: it ended while HQ was "
                "not recording, or gearmand dropped it after --job-retries")
RESTARTED = "gearmand restarted while HQ was not watching"


@dataclass(frozen=True, slots=True)
class Unheld:
    boot: str
    handle: str
    reason: str


def unheld_jobs(server: str, *, held: set[str], listed_at: float, boot: str) -> list[Unheld]:
    """Open jobs of ``server`` that gearmand's list (``held``, taken at ``listed_at``, epoch
    seconds, under the boot ``boot``) shows to have ended unrecorded. Jobs of other boots
    are all ended: that gearmand is gone."""
    cut = datetime.fromtimestamp(listed_at - MARGIN_S, tz=UTC)
    old_enough = (Q(submitted_at__lt=cut)
                  | Q(submitted_at__isnull=True, started_at__lt=cut)
                  | Q(submitted_at__isnull=True, started_at__isnull=True, updated_at__lt=cut))
    rows = (Job.objects.filter(server__name=server, state__in=[State.QUEUED, State.RUNNING])
            .filter(old_enough).values_list("boot__token", "handle")
            .order_by("id")[:BATCH * 2])
    found = []
    for token, handle in rows:
        if token != boot:
            found.append(Unheld(token, handle, RESTARTED))
        elif handle not in held:
            found.append(Unheld(token, handle, ENDED_UNSEEN))
        if len(found) >= BATCH:
            break
    return found


def caught_up(pending_since: float | None, listed_at: float) -> bool:
    """Whether every event captured before ``listed_at`` is in Postgres, given the capture
    time of the writer's oldest uncommitted event."""
    return pending_since is None or pending_since > listed_at


def age(listed_at: float, now: float) -> timedelta:
    return timedelta(seconds=max(0.0, now - listed_at))
