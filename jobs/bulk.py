"""Bulk actions by filter: "retry every failed ``resize_image`` job of the last hour".

Asking (:func:`start`) only counts the matching jobs and writes a :class:`BulkAction`; the
work is done in the background by the scheduler's tick (``jobs/scheduler.py``, every second
from Celery beat), a batch at a time, never in one request or one transaction:

* a tick claims a running bulk action whose lease has expired with ``SELECT … FOR UPDATE
  SKIP LOCKED`` and leases it (the alert outbox's pattern), so two Celery workers never
  work on the same one;
* it acts on the next :data:`BATCH` matching jobs after ``cursor`` (ids up to ``max_id``,
  the newest job when it was asked for). Retries are made :data:`RETRY_CHUNK` at a time in
  one transaction that locks the originals, submits each over pooled gearmand connections
  (``broker.client.POOL``), writes the new rows, their audit rows (one statement each)
  and the action's ``cursor`` and ``done``/``failed`` — the same checks, rows and audit
  rows as ``services.retry``. Cancels (one gearmand admin command each) and discards go
  one by one through ``services.cancel``/``services.discard``, then ``cursor`` and the
  counts move in one transaction;
* a worker killed mid-batch leaves the lease to expire and the work is done again from
  the old cursor. Each job is still acted on once: a retry carries the idempotency key
  ``bulk:<id>:<job id>`` (the retry made the first time is found, not made again), and a
  cancel of a cancelled job changes nothing; the counts are committed with the cursor, so
  they count each job once. A worker killed after gearmand acknowledged a chunk's
  submits but before the chunk committed makes them again: a job with a unique key
  coalesces with the one gearmand holds; one without may run twice (at most one chunk's
  jobs, only on such a crash).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Max, QuerySet
from django.utils import timezone

from broker.client import ServerAddress
from hq import audit
from hq.errors import HQError, InvalidInput, NotFound, Unavailable

from . import services
from .fold import payload_bytes, split_bytes
from .models import BulkAction, Job, Server, State
from .redaction import is_redacted
from .selectors import FILTERS, filter_values, search_jobs

if TYPE_CHECKING:
    from .services import User as Actor

ACTIONS = ("retry", "cancel", "discard")
BATCH = 200
#: retries submitted and recorded per transaction
RETRY_CHUNK = 100
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


def run_batch(bulk: BulkAction) -> int:
    """The next batch of one claimed bulk action; how many jobs it went through."""
    ids = list(matching(bulk.filter, max_id=bulk.max_id).filter(id__gt=bulk.cursor)
               .order_by("id").values_list("id", flat=True)[:BATCH])
    if bulk.action == "retry":
        acted, away = 0, None
        for at in range(0, len(ids), RETRY_CHUNK):
            chunk = ids[at:at + RETRY_CHUNK]
            with transaction.atomic():
                row = BulkAction.objects.select_for_update().get(pk=bulk.pk)
                outcome = _retry_chunk(row, chunk)
                _count(row, outcome, finished=outcome.away is None and len(ids) < BATCH
                       and at + RETRY_CHUNK >= len(ids))
            acted += len(outcome.acted)
            away = outcome.away
            if away is not None:
                break
    else:
        outcome = _one_by_one(bulk, ids)
        with transaction.atomic():
            row = BulkAction.objects.select_for_update().get(pk=bulk.pk)
            _count(row, outcome, finished=outcome.away is None and len(ids) < BATCH)
        acted, away = len(outcome.acted), outcome.away
    if not ids and bulk.action == "retry":  # nothing was left: done
        with transaction.atomic():
            row = BulkAction.objects.select_for_update().get(pk=bulk.pk)
            _count(row, _Outcome(), finished=True)
    bulk.refresh_from_db()
    if away is not None:
        raise away
    return acted


class _Outcome:
    def __init__(self) -> None:
        self.acted: list[int] = []
        self.done = self.failed = 0
        self.errors: list[dict[str, Any]] = []
        self.away: Unavailable | None = None

    def refused(self, job_id: int, reason: str) -> None:
        self.acted.append(job_id)
        self.failed += 1
        self.errors.append({"job": job_id, "error": reason})

    def ok(self, job_id: int) -> None:
        self.acted.append(job_id)
        self.done += 1


def _count(row: BulkAction, outcome: _Outcome, *, finished: bool) -> None:
    """Move the (locked) action's cursor and counts past what ``outcome`` went through."""
    row.cursor = outcome.acted[-1] if outcome.acted else row.cursor
    row.done += outcome.done
    row.failed += outcome.failed
    row.errors = (row.errors + outcome.errors)[:ERRORS_KEPT]
    if finished:
        row.state, row.finished_at, row.leased_until = BulkAction.DONE, timezone.now(), None
        audit.record(user=row.user, via=row.via, action=f"bulk_{row.action}",
                     target=f"bulk {row.pk}",
                     detail={"result": "done", "done": row.done, "failed": row.failed})
    else:
        row.leased_until = timezone.now() + LEASE
    row.save()


def _one_by_one(bulk: BulkAction, ids: list[int]) -> _Outcome:
    outcome = _Outcome()
    for job_id in ids:
        try:
            # discard: a dead letter leaves the list (kept in history); no gearmand
            act = services.discard if bulk.action == "discard" else services.cancel
            act(job_id=job_id, user=bulk.user, via=bulk.via)
        except Unavailable as exc:  # gearmand is away: tried again later, not counted
            outcome.away = exc
            break
        except HQError as exc:
            outcome.refused(job_id, exc.message)
        else:
            outcome.ok(job_id)
    return outcome


def _retry_chunk(bulk: BulkAction, ids: list[int]) -> _Outcome:
    """Retry the jobs ``ids`` in the caller's transaction, as ``services.retry`` does each:
    the original locked and checked, the job submitted again (same function, unique,
    priority, payload; background), HQ's row with ``retry_of`` and the idempotency key,
    an audit row for each retry and each refusal. Stops at the first job no gearmand
    accepts (``away``): those before it are recorded."""
    outcome = _Outcome()
    keys = {job_id: f"bulk:{bulk.pk}:{job_id}" for job_id in ids}
    made = set(Job.objects.filter(action_key__in=keys.values())
               .values_list("action_key", flat=True))
    originals = {job.pk: job for job in Job.objects.select_for_update(of=("self",))
                 .filter(pk__in=ids).order_by("id")}
    rows: list[Job] = []
    audits: list[tuple[str, dict[str, Any]]] = []  # (target, detail): one INSERT at the end
    servers: dict[ServerAddress, Server] = {}
    for job_id in ids:
        if keys[job_id] in made:  # retried before a crash: found, not made again
            outcome.ok(job_id)
            continue
        original = originals.get(job_id)
        reason = (f"No job with id {job_id}." if original is None else
                  _refusal(original))
        if reason or original is None:
            outcome.refused(job_id, reason)
            audits.append((f"job {job_id}",
                           {"result": "refused", "code": "conflict" if original
                            else "not_found", "reason": reason}))
            continue
        data = payload_bytes(original.payload)
        priority = original.priority or "normal"
        try:
            conn, handle = services.send(original.function, data, unique=original.unique,
                                         priority=priority, background=True)
        except Unavailable as exc:
            outcome.away = exc
            break
        conn.close()  # back to the pool
        if conn.server not in servers:
            servers[conn.server] = services.server_row(conn.server)
        text, raw = split_bytes(data)
        at = timezone.now()
        rows.append(Job(server=servers[conn.server], boot=None, handle=handle,
                        function=original.function, unique=original.unique,
                        priority=priority, background=True, state=State.QUEUED,
                        submitted_at=at, retry_of=original, action_key=keys[job_id],
                        updated_at=at, clients=1, payload_text=text, payload_bin=raw,
                        payload_size=len(data)))
        outcome.ok(job_id)
    Job.objects.bulk_create(rows)
    audits.extend((f"job {job.pk}",
                   {"result": "ok", "function": job.function, "handle": job.handle,
                    "server": job.server.name, "retry_of": job.retry_of_id})
                  for job in rows)
    audit.record_many(user=bulk.user, via=bulk.via, action="retry", rows=audits)
    return outcome


def _refusal(original: Job) -> str:
    reason = original.retry_refusal(redacted=is_redacted(original.function))
    return f"Job {original.pk} cannot be retried: {reason}." if reason else ""


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
