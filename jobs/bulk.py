"""Bulk actions by filter: "retry every failed ``resize_image`` job of the last hour".

Asking (:func:`start`) only counts the matching jobs and writes a :class:`BulkAction`; the
work is done in the background by the scheduler's tick (``jobs/scheduler.py``, every second
from Celery beat), a batch at a time, never in one request or one transaction:

* a tick claims a running bulk action whose lease has expired with ``SELECT … FOR UPDATE
  SKIP LOCKED`` and leases it (the alert outbox's pattern), so two Celery workers never
  work on the same one;
* it acts on the next :data:`BATCH` matching jobs after ``cursor`` (ids up to ``max_id``,
  the newest job when it was asked for), each through the ordinary service in its own
  transaction, then moves ``cursor`` and adds to ``done``/``failed`` in one transaction;
* a worker killed mid-batch leaves the lease to expire and the batch is done again from
  the old cursor. Each job is still acted on once: a retry carries the idempotency key
  ``bulk:<id>:<job id>`` (the retry made the first time is found, not made again), and a
  cancel of a cancelled job changes nothing; the counts of a batch are committed with its
  cursor, so they count each job once.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Max, QuerySet
from django.utils import timezone

from hq import audit
from hq.errors import HQError, InvalidInput, NotFound, Unavailable

from . import services
from .models import BulkAction, Job
from .selectors import FILTERS, filter_values, search_jobs

if TYPE_CHECKING:
    from .services import User as Actor

ACTIONS = ("retry", "cancel", "discard")
BATCH = 200
LEASE = timedelta(seconds=60)
ERRORS_KEPT = 20


def matching(filters: dict[str, str], *, max_id: int | None = None) -> QuerySet[Job]:
    qs = search_jobs(filters)
    return qs.filter(id__lte=max_id) if max_id is not None else qs


def clean_filter(raw: object) -> dict[str, str]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidInput("filter must be an object of the list filters",
                           fields={"filter": ["An object, e.g. {\"state\": \"failed\"}."]})
    unknown = sorted(set(raw) - set(FILTERS))
    if unknown:
        raise InvalidInput(f"unknown filter {unknown[0]!r}",
                           fields={"filter": [f"Filters: {', '.join(FILTERS)}."]})
    values = filter_values(raw)
    return {k: v for k, v in values.items() if v}


def describe(action: str, count: int, filters: dict[str, str]) -> str:
    """"Retry 1,284 failed `resize_image` jobs submitted after …?"-style words."""
    words = [action.capitalize(), f"{count:,}"]
    if filters.get("state"):
        words.append(filters["state"].replace(",", " or "))
    if filters.get("function"):
        words.append(f"`{filters['function']}`")
    words.append("job" if count == 1 else "jobs")
    if filters.get("priority"):
        words.insert(2, f"{filters['priority']}-priority")
    if filters.get("background"):
        words.insert(2, "background" if filters["background"].lower() == "true"
                     else "foreground")
    for name, text in (("server", "on"), ("worker", "run by"), ("q", "matching"),
                       ("submitted_after", "submitted after"),
                       ("submitted_before", "submitted before"), ("retry_of", "retrying job")):
        if filters.get(name):
            words.append(f"{text} {filters[name]}")
    return " ".join(words) + "?"


def start(*, action: str, filter: object, dry_run: bool = False, user: Actor,
          via: str) -> tuple[BulkAction | None, int]:
    """Count the jobs ``filter`` matches; unless ``dry_run``, record the bulk action that
    the scheduler's ticks will carry out. Returns (the action or None, the count)."""
    if action not in ACTIONS:
        raise InvalidInput(f"action must be one of {', '.join(ACTIONS)}",
                           fields={"action": [f"One of: {', '.join(ACTIONS)}."]})
    filters = clean_filter(filter)
    max_id = Job.objects.aggregate(m=Max("id"))["m"] or 0
    count = matching(filters, max_id=max_id).count()
    if dry_run:
        return None, count
    with transaction.atomic():
        bulk = BulkAction.objects.create(
            action=action, filter=filters, total=count, max_id=max_id,
            user=user if isinstance(user, User) else None, via=via,
            state=BulkAction.RUNNING if count else BulkAction.DONE,
            finished_at=None if count else timezone.now())
        audit.record(user=user, via=via, action=f"bulk_{action}", target=f"bulk {bulk.pk}",
                     detail={"result": "started", "count": count, "filter": filters})
    return bulk, count


def get(bulk_id: int) -> BulkAction:
    bulk = BulkAction.objects.filter(pk=bulk_id).first()
    if bulk is None:
        raise NotFound(f"No bulk action with id {bulk_id}.")
    return bulk


def as_json(bulk: BulkAction) -> dict[str, Any]:
    return {"id": bulk.pk, "action": bulk.action, "state": bulk.state, "total": bulk.total,
            "done": bulk.done, "failed": bulk.failed, "errors": bulk.errors,
            "filter": bulk.filter}


def _claim(now: datetime) -> BulkAction | None:
    with transaction.atomic():
        bulk = (BulkAction.objects.select_for_update(skip_locked=True)
                .filter(state=BulkAction.RUNNING)
                .exclude(leased_until__gt=now).order_by("id").first())
        if bulk is not None:
            bulk.leased_until = now + LEASE
            bulk.save(update_fields=["leased_until", "updated_at"])
    return bulk


def _act(bulk: BulkAction, job_id: int) -> str:
    """Act on one job; the refusal's words, or "" when it was done."""
    actor = bulk.user
    try:
        if bulk.action == "retry":
            services.retry(job_id=job_id, user=actor, via=bulk.via,
                           idempotency_key=f"bulk:{bulk.pk}:{job_id}", link_wait_s=None)
        elif bulk.action == "discard":  # a dead letter leaves the list (kept in history)
            services.discard(job_id=job_id, user=actor, via=bulk.via)
        else:
            services.cancel(job_id=job_id, user=actor, via=bulk.via)
    except Unavailable:
        raise  # gearmand is away: this job is tried again later, not counted as failed
    except HQError as exc:
        return exc.message
    return ""


def run_batch(bulk: BulkAction) -> int:
    """The next batch of one claimed bulk action; how many jobs it went through."""
    ids = list(matching(bulk.filter, max_id=bulk.max_id).filter(id__gt=bulk.cursor)
               .order_by("id").values_list("id", flat=True)[:BATCH])
    done = failed = 0
    errors: list[dict[str, Any]] = []
    acted: list[int] = []
    away: Unavailable | None = None
    for job_id in ids:
        try:
            reason = _act(bulk, job_id)
        except Unavailable as exc:
            away = exc
            break
        acted.append(job_id)
        if reason:
            failed += 1
            errors.append({"job": job_id, "error": reason})
        else:
            done += 1
    with transaction.atomic():
        row = BulkAction.objects.select_for_update().get(pk=bulk.pk)
        row.cursor = acted[-1] if acted else row.cursor
        row.done += done
        row.failed += failed
        row.errors = (row.errors + errors)[:ERRORS_KEPT]
        if away is None and len(ids) < BATCH:
            row.state, row.finished_at, row.leased_until = BulkAction.DONE, timezone.now(), None
            audit.record(user=row.user, via=row.via, action=f"bulk_{row.action}",
                         target=f"bulk {row.pk}",
                         detail={"result": "done", "done": row.done, "failed": row.failed})
        else:
            row.leased_until = timezone.now() + LEASE
        row.save()
    bulk.refresh_from_db()
    if away is not None:
        raise away
    return len(acted)


def advance(*, now: datetime | None = None, max_s: float = 5.0) -> int:
    """Work on running bulk actions for up to ``max_s`` seconds (one scheduler tick):
    jobs gone through."""
    stop_at = time.monotonic() + max_s
    total = 0
    while time.monotonic() < stop_at:
        bulk = _claim(now or timezone.now())
        if bulk is None:
            break
        try:
            while bulk.state == BulkAction.RUNNING and time.monotonic() < stop_at:
                total += run_batch(bulk)
        except Unavailable:
            BulkAction.objects.filter(pk=bulk.pk).update(leased_until=None)
            break
        if bulk.state == BulkAction.RUNNING:  # out of time: let the next tick go on
            BulkAction.objects.filter(pk=bulk.pk).update(leased_until=None)
    return total
