"""Writes about recurring schedules: create, change, delete (keyword-only, one transaction
each, audited), and the cron arithmetic they share with the pages (:func:`next_runs`).

Cron expressions are read by cronsim (the library healthchecks uses), with Debian cron's
rules, in the schedule's IANA time zone: when a tick falls in the hour a DST change skips
(02:30 on the spring-forward night in New York), it runs at the first minute that exists
(03:00); when it falls in the hour that happens twice (01:30 on the fall-back night), it
runs once, at the first one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from django.db import IntegrityError, transaction
from django.utils import timezone

from hq import audit
from hq.errors import Conflict, InvalidInput, NotFound

from ..fold import split_bytes
from ..models import Overlap, Schedule
from ..services import PRIORITIES, check_payload

if TYPE_CHECKING:
    from ..services import User

FIELDS = ("name", "function", "payload", "unique", "priority", "cron", "timezone",
          "enabled", "overlap")
NEXT_RUNS = 5


def zone(name: str) -> ZoneInfo:
    try:
        if not name or "\0" in name or len(name) > 64:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown time zone {name[:64]!r}",
                           fields={"timezone": ["An IANA time zone, e.g. Europe/Berlin or "
                                                "UTC."]}) from None


def check_cron(expr: str) -> str:
    """A 5-field cron expression cronsim accepts, tidied (single spaces)."""
    parts = expr.split()
    if len(parts) != 5:
        raise InvalidInput("cron must have 5 fields (minute hour day month weekday)",
                           fields={"cron": ["5 fields: minute hour day month weekday, e.g. "
                                            "0 3 * * *."]})
    text = " ".join(parts)
    try:
        CronSim(text, datetime.now(UTC))
    except (CronSimError, ValueError, IndexError) as exc:
        raise InvalidInput(f"cron {text!r} is not valid: {exc}",
                           fields={"cron": [f"{exc}."]}) from None
    return text


def next_runs(cron: str, tz: str, *, after: datetime | None = None,
              count: int = NEXT_RUNS) -> list[datetime]:
    """The next ``count`` ticks after ``after`` (default now), as aware times in ``tz``."""
    text, where = check_cron(cron), zone(tz)
    start = (after or timezone.now()).astimezone(where)
    it = CronSim(text, start)
    out: list[datetime] = []
    for _ in range(count):
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out


def next_tick(schedule: Schedule, after: datetime) -> datetime | None:
    runs = next_runs(schedule.cron, schedule.timezone, after=after, count=1)
    return runs[0].astimezone(UTC) if runs else None


def _apply(schedule: Schedule, data: dict[str, Any]) -> None:
    from ..services import check_name

    if "name" in data:
        name = str(data["name"]).strip()
        if not name or len(name) > 100 or "\0" in name:
            raise InvalidInput("name is required (100 characters at most)",
                               fields={"name": ["1 to 100 characters."]})
        schedule.name = name
    if "function" in data:
        schedule.function = check_name("function", str(data["function"]), 255, required=True)
    if "unique" in data:
        schedule.unique = check_name("unique", str(data["unique"] or ""), 255, required=False)
    if "priority" in data:
        priority = data["priority"] or "normal"
        if priority not in PRIORITIES:
            raise InvalidInput(f"priority must be one of {', '.join(PRIORITIES)}",
                               fields={"priority": [f"One of: {', '.join(PRIORITIES)}."]})
        schedule.priority = priority
    if "payload" in data:
        raw = data["payload"]
        payload = raw if isinstance(raw, bytes) else str(raw or "").encode()
        check_payload(payload)
        schedule.payload_text, schedule.payload_bin = split_bytes(payload)
        schedule.payload_size = len(payload)
    if "cron" in data:
        schedule.cron = check_cron(str(data["cron"]))
    if "timezone" in data:
        schedule.timezone = zone(str(data["timezone"] or "UTC")).key
    if "enabled" in data:
        schedule.enabled = bool(data["enabled"])
    if "overlap" in data:
        if data["overlap"] not in Overlap.values:
            raise InvalidInput("overlap must be allow or skip",
                               fields={"overlap": ["allow or skip."]})
        schedule.overlap = data["overlap"]


def _save(schedule: Schedule, *, now: datetime) -> None:
    schedule.next_run_at = next_tick(schedule, now) if schedule.enabled else None
    try:
        with transaction.atomic():
            schedule.save()
    except IntegrityError:
        raise Conflict(f"A schedule named {schedule.name!r} exists already.",
                       fields={"name": ["Already taken."]}) from None


def create(*, data: dict[str, Any], user: User, via: str,
           now: datetime | None = None) -> Schedule:
    """A new schedule from ``data`` (the fields of :data:`FIELDS`; name, function and cron
    required); its first tick is the first after ``now``."""
    missing = [f for f in ("name", "function", "cron") if not data.get(f)]
    if missing:
        raise InvalidInput(f"{missing[0]} is required",
                           fields={f: ["This field is required."] for f in missing})
    schedule = Schedule()
    _apply(schedule, data)
    with transaction.atomic():
        _save(schedule, now=now or timezone.now())
        audit.record(user=user, via=via, action="schedule_create",
                     target=f"schedule {schedule.pk}",
                     detail={"result": "ok", "name": schedule.name, "cron": schedule.cron,
                             "timezone": schedule.timezone})
    return schedule


def update(*, schedule_id: int, data: dict[str, Any], user: User, via: str,
           now: datetime | None = None) -> Schedule:
    """Change a schedule; its next tick is worked out again from ``now``."""
    with transaction.atomic():
        schedule = Schedule.objects.select_for_update().filter(pk=schedule_id).first()
        if schedule is None:
            raise NotFound(f"No schedule with id {schedule_id}.")
        _apply(schedule, data)
        _save(schedule, now=now or timezone.now())
        audit.record(user=user, via=via, action="schedule_update",
                     target=f"schedule {schedule.pk}",
                     detail={"result": "ok", "changed": sorted(k for k in data
                                                               if k in FIELDS)})
    return schedule


def delete(*, schedule_id: int, user: User, via: str) -> None:
    with transaction.atomic():
        schedule = Schedule.objects.select_for_update().filter(pk=schedule_id).first()
        if schedule is None:
            raise NotFound(f"No schedule with id {schedule_id}.")
        audit.record(user=user, via=via, action="schedule_delete",
                     target=f"schedule {schedule.pk}", detail={"result": "ok",
                                                               "name": schedule.name})
        schedule.delete()
