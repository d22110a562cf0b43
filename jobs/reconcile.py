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

Jobs HQ missed whole (they began and ended while no tap recorded, or their events were
dropped) have no row to compare. gearmand numbers its jobs ``<prefix>:1``, ``:2``, … in the
order it creates them (a submit that joins a job with the same unique key makes none), so
:func:`unrecorded` finds the numbers missing between recorded jobs of the current boot and
the tap records each as a ``lost`` job with no function: "HQ did not record this job".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import connection
from django.db.models import Q

from .models import Job, State

#: a job first seen less than this before gearmand's list was taken is not judged by it
MARGIN_S = 5.0
#: at most this many rows are marked per pass (the rest at the next one)
BATCH = 10_000

ENDED_UNSEEN = ("gearmand no longer holds it and HQ never saw it end: it ended while HQ was "
                "not recording, or gearmand dropped it after --job-retries")
RESTARTED = "gearmand restarted while HQ was not watching"
NOT_RECORDED = ("HQ did not record this job: gearmand created it (its number is between "
                "two recorded jobs) while the tap was down or dropping events")
#: how far back the first gap search of a tap looks for the boot's jobs
FIRST_LOOK = timedelta(hours=1)
#: at most this many numbers are searched per pass (a longer gap: the newest of it)
GAP_MAX = 200_000
_NUMBERED = re.compile(r"^(.*:)(\d{1,18})$")


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
    # HQ's own rows (a job it submitted whose tap row is not written yet) have no boot:
    # the tap's row is what gearmand's list speaks of (jobs/services.py)
    rows = (Job.objects.filter(server__name=server, state__in=[State.QUEUED, State.RUNNING],
                               boot__isnull=False)
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


@dataclass(frozen=True, slots=True)
class Gaps:
    handles: list[str]  # of jobs HQ has no row for, oldest first
    mark: int | None  # the highest number searched: the next search starts above it


def unrecorded(server: str, *, boot: str, held: set[str], listed_at: float,
               after: int | None) -> Gaps:
    """Handles of ``boot``'s jobs that HQ has no row for and gearmand no longer holds
    (``held``, its list): numbered above ``after`` (None:
    above the oldest job recorded in the last :data:`FIRST_LOOK`) and below the newest job
    submitted before ``listed_at`` − :data:`MARGIN_S` — every job gearmand created before
    that one was captured before the list was taken, so it is written by now if it ever
    will be."""
    cut = datetime.fromtimestamp(listed_at - MARGIN_S, tz=UTC)
    jobs = Job.objects.filter(server__name=server, boot__token=boot, submitted_at__lt=cut,
                              submitted_at__gte=cut - FIRST_LOOK)
    newest = jobs.order_by("-submitted_at").values_list("handle", "boot_id").first()
    if newest is None or (top := _NUMBERED.match(newest[0])) is None:
        return Gaps([], after)
    prefix, hi, boot_id = top.group(1), int(top.group(2)), newest[1]
    if after is None:
        oldest = jobs.order_by("submitted_at").values_list("handle", flat=True).first()
        low = _NUMBERED.match(oldest or "")
        if low is None or low.group(1) != prefix:
            return Gaps([], hi)
        after = int(low.group(2))
    first = max(after + 1, hi - GAP_MAX)
    if first >= hi:
        return Gaps([], max(after, hi))
    with connection.cursor() as cur:
        cur.execute(
            "SELECT %(prefix)s || n FROM generate_series(%(first)s::bigint, %(last)s) n "
            f"WHERE NOT EXISTS (SELECT 1 FROM {Job._meta.db_table} j "
            "WHERE j.boot_id = %(boot)s AND j.handle = %(prefix)s || n) ORDER BY n",
            {"prefix": prefix, "first": first, "last": hi - 1, "boot": boot_id})
        missing = [row[0] for row in cur.fetchall()]
    # a job still queued in gearmand is recorded when it is assigned
    return Gaps([h for h in missing if h not in held], hi)
