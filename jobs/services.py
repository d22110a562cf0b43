"""Job actions: submit, schedule (one-off), retry, cancel, discard — and how HQ's own rows meet the
rows its taps write.

Every action is a function with keyword-only arguments that runs in one transaction,
writes its audit row (``hq.audit``) in that transaction, and raises an ``HQError`` when it
is refused (the refusal is audited on its own). Views, the API, Celery tasks and the
scheduler only call these.

How a job HQ submits becomes *one* row
--------------------------------------
The tap records every job it sees on the wire, HQ's submits included, keyed by
``(boot, handle)``: its writer inserts the row the first time and merges later events into
it (``jobs/sql/upsert_jobs.sql``: ``INSERT … ON CONFLICT DO NOTHING`` then ``UPDATE … FROM``
the staged batch, one statement, one snapshot). HQ must therefore never *insert* or
*re-key* a row under a ``(boot, handle)`` the writer may be writing at the same moment: a
writer statement whose snapshot predates HQ's commit would find the key taken, do nothing,
and its ``UPDATE`` (which cannot see HQ's row) would drop that batch's events for the job.
So:

1. HQ's own row (call it X) never has a boot. A job scheduled for later is X with
   ``state = scheduled``, no handle, ``scheduled_for`` set, durable in Postgres; the
   payload, unique, priority and ``retry_of`` live on it.
2. To submit, HQ locks X (the scheduler claims it with ``FOR UPDATE SKIP LOCKED``), sends
   the job to the first gearmand that acknowledges it (``broker.client.submit_first``,
   bounded by timeouts) and, in the same transaction, writes the handle and the server
   onto X with ``state = queued``. A submit gearmand never acknowledged rolls the
   transaction back: no row claims the job was queued (for an immediate submit no row is
   written at all). A crash between gearmand's acknowledgement and the commit leaves X
   scheduled and it is submitted again; scheduled jobs always carry a unique key (HQ makes
   one up when none is given) so that a second submit of a job gearmand still holds
   coalesces with it instead of running twice.
3. The tap writes its own row Y for ``(server, handle)`` within its flush interval.
   :func:`link_submitted` (right after a submit, and every scheduler tick for those still
   waiting) then makes them one row *that keeps X's id*: it locks X and Y, deletes X, and
   updates Y — only Y's ordinary columns and its id, never its ``(boot, handle)`` key — to
   ``id = X.id`` with X's ``retry_of``, ``scheduled_for`` and idempotency key. A concurrent
   writer ``UPDATE`` of Y waits for that row lock and then applies its batch to the new
   version (same key), so nothing the tap records is lost, and the id HQ gave out (the
   API's answer to a scheduled submit, a retry's link) names the job for good. Y is the
   newest row with that server and handle written after the submit; if Y is older than the
   submit, gearmand coalesced the submit with a job it already held (same unique key):
   X is dropped and Y is the job.
4. Until Y appears (the tap is behind, or nothing records that gearmand), X stands for
   the job: it is ``queued`` with its handle and can be cancelled by it.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from broker.admin import parse_address
from broker.client import (
    GearmanError,
    NotAcknowledged,
    Outcome,
    ServerAddress,
    SubmitConnection,
    submit_first,
)
from broker.client import (
    cancel_job as gearmand_cancel,
)
from broker.limits import FUNCTION_MAX, UNIQUE_MAX
from hq import audit
from hq.errors import Conflict, HQError, InvalidInput, NotFound, Unavailable

from .fold import payload_bytes, split_bytes
from .models import Job, Schedule, ScheduleRun, Server, State
from .redaction import is_redacted

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

    User = AbstractBaseUser | AnonymousUser | None

log = logging.getLogger(__name__)

PRIORITIES = ("high", "normal", "low")
#: the longest a foreground submit may wait for its result (``?wait=``)
WAIT_MAX_S = 60
#: a tap row written this long before HQ's submit is not that submit's job
LINK_WINDOW = timedelta(seconds=30)
#: HQ's submits still waiting for their tap row are looked for this long
LINK_GIVE_UP = timedelta(hours=1)

_next_server = itertools.count()


class PayloadTooLarge(HQError):
    code = "payload_too_large"
    status = 413


@dataclass(frozen=True, slots=True)
class Submitted:
    """What :func:`submit` did: the job (HQ's row, or the tap's once linked), and for a
    foreground submit that waited, how the job ended (None: the wait ran out)."""

    job: Job
    outcome: Outcome | None = None
    replayed: bool = False  # the idempotency key named a job made earlier


# -- checks ---------------------------------------------------------------------------------------


def check_payload(payload: bytes) -> bytes:
    limit = int(settings.HQ_PAYLOAD_MAX)
    if len(payload) > limit:
        raise PayloadTooLarge(
            f"payload is {len(payload):,} bytes; HQ_PAYLOAD_MAX allows {limit:,}",
            fields={"payload": [f"At most {limit:,} bytes."]})
    return payload


def check_name(field: str, value: str, limit: int, *, required: bool) -> str:
    value = value.strip() if field == "function" else value
    if required and not value:
        raise InvalidInput(f"{field} is required", fields={field: ["This field is required."]})
    if "\0" in value or (field == "function" and any(c.isspace() for c in value)):
        raise InvalidInput(f"{field} may not contain NUL or white space",
                           fields={field: ["No NUL or white space."]})
    if len(value.encode()) > limit:
        raise InvalidInput(f"{field} is longer than {limit} bytes",
                           fields={field: [f"At most {limit} bytes."]})
    return value


def _check_priority(priority: str) -> str:
    priority = priority or "normal"
    if priority not in PRIORITIES:
        raise InvalidInput(f"priority must be one of {', '.join(PRIORITIES)}",
                           fields={"priority": [f"One of: {', '.join(PRIORITIES)}."]})
    return priority


# -- gearmand -------------------------------------------------------------------------------------


def gearman_servers() -> list[ServerAddress]:
    servers: list[ServerAddress] = list(getattr(settings, "HQ_GEARMAN_SERVERS", []))
    if not servers:
        raise Unavailable("No gearmand is configured (HQ_GEARMAN).")
    return servers


def send(function: str, payload: bytes, *, unique: str, priority: str,
          background: bool) -> tuple[SubmitConnection, str]:
    """Submit to a healthy gearmand, the next one when one is down (each submit starts at
    the next server, which spreads them); 503 when none acknowledged."""
    servers = gearman_servers()
    try:
        return submit_first(servers, function, payload, unique=unique, priority=priority,
                            background=background, start=next(_next_server) % len(servers))
    except NotAcknowledged as exc:
        names = ", ".join(s.name for s in servers)
        raise Unavailable(f"No gearmand accepted the job ({names}): {exc}") from None


def server_row(address: ServerAddress) -> Server:
    """The Server row a configured gearmand is recorded under (its tap's ``--server``)."""
    server, created = Server.objects.get_or_create(
        name=address.name, defaults={"address": address.address})
    if not created and not server.address:
        Server.objects.filter(pk=server.pk).update(address=address.address)
    return server


def address_of(server: Server) -> ServerAddress:
    """Where HQ reaches the gearmand a job is on: HQ_GEARMAN by name, else the address
    its tap recorded."""
    for address in getattr(settings, "HQ_GEARMAN_SERVERS", []):
        if address.name == server.name:
            return address
    if server.address:
        try:
            host, port = parse_address(server.address)
            return ServerAddress(server.name, host, port)
        except ValueError:
            pass
    raise Conflict(f"HQ does not know where gearmand {server.name!r} listens: add it to "
                   "HQ_GEARMAN (NAME=HOST:PORT).")


def _payload_fields(payload: bytes) -> dict[str, Any]:
    text, raw = split_bytes(payload)
    return {"payload_text": text, "payload_bin": raw, "payload_size": len(payload)}


# -- submit and schedule --------------------------------------------------------------------------


def submit(*, function: str, payload: bytes, unique: str = "", priority: str = "normal",
           background: bool = True, run_at: datetime | None = None, wait_s: float = 0,
           user: User, via: str, idempotency_key: str = "",
           now: datetime | None = None) -> Submitted:
    """Submit a job now, or hold it until ``run_at`` when that is in the future (state
    ``scheduled``, no handle). A foreground job is waited for up to ``wait_s`` seconds."""
    now = now or timezone.now()
    function = check_name("function", function, FUNCTION_MAX, required=True)
    unique = check_name("unique", unique, UNIQUE_MAX, required=False)
    priority = _check_priority(priority)
    check_payload(payload)
    if not 0 <= wait_s <= WAIT_MAX_S:
        raise InvalidInput(f"wait must be between 0 and {WAIT_MAX_S} seconds",
                           fields={"wait": [f"0 to {WAIT_MAX_S}."]})
    key = check_name("idempotency_key", idempotency_key, 100, required=False)
    if key:
        earlier = Job.objects.filter(action_key=key).first()
        if earlier is not None:
            return Submitted(earlier, replayed=True)
    if run_at is not None and run_at > now:
        if not background:
            raise InvalidInput("a scheduled job must be a background job: nobody would be "
                               "waiting for its result when it runs",
                               fields={"background": ["Must be true with run_at."]})
        return Submitted(_schedule(function=function, payload=payload, unique=unique,
                                   priority=priority, run_at=run_at, user=user, via=via,
                                   key=key or None, now=now))
    try:
        job, conn = submit_recorded(function=function, payload=payload, unique=unique,
                                priority=priority, background=background, user=user, via=via,
                                key=key or None, retry_of=None, action="submit", now=now)
    except Unavailable as exc:
        audit.record_refusal(user=user, via=via, action="submit", target=f"function {function}",
                             reason=exc.message, code=exc.code)
        raise
    outcome = None
    try:
        if not background and wait_s > 0:
            outcome = conn.wait(job.handle, wait_s)
    finally:
        conn.close()
    return Submitted(link_submitted(job_id=job.pk), outcome)


def _schedule(*, function: str, payload: bytes, unique: str, priority: str, run_at: datetime,
              user: User, via: str, key: str | None, now: datetime) -> Job:
    with transaction.atomic():
        job = Job.objects.create(
            server=server_row(gearman_servers()[0]), boot=None, handle="", function=function,
            # a unique key, so a submit repeated after a crash attaches instead of running
            # the job twice (see the module's docstring)
            unique=unique or f"hq-{uuid.uuid4()}", priority=priority, background=True,
            state=State.SCHEDULED, scheduled_for=run_at, action_key=key, updated_at=now,
            **_payload_fields(payload))
        audit.record(user=user, via=via, action="schedule", target=f"job {job.pk}",
                     detail={"result": "ok", "function": function,
                             "run_at": run_at.isoformat(), "bytes": len(payload)})
    return job


def submit_recorded(*, function: str, payload: bytes, unique: str, priority: str,
                    background: bool, user: User, via: str, key: str | None,
                    retry_of: Job | None, action: str, now: datetime,
                    scheduled_for: datetime | None = None,
                    detail: dict[str, Any] | None = None) -> tuple[Job, SubmitConnection]:
    """Send the job, then write HQ's row for it (only once gearmand acknowledged it) and
    its audit row, in one transaction; the caller closes the returned connection."""
    with transaction.atomic():
        conn, handle = send(function, payload, unique=unique, priority=priority,
                             background=background)
        try:
            job = Job.objects.create(
                server=server_row(conn.server), boot=None, handle=handle,
                function=function, unique=unique, priority=priority, background=background,
                state=State.QUEUED, submitted_at=timezone.now(), retry_of=retry_of,
                scheduled_for=scheduled_for, action_key=key, updated_at=now, clients=1,
                **_payload_fields(payload))
            audit.record(user=user, via=via, action=action, target=f"job {job.pk}",
                         detail={"result": "ok", "function": function, "handle": handle,
                                 "server": conn.server.name,
                                 **({"retry_of": retry_of.pk} if retry_of else {}),
                                 **(detail or {})})
        except BaseException:
            conn.close()
            raise
    return job, conn


# -- retry ----------------------------------------------------------------------------------------


def retry(*, job_id: int, user: User, via: str, idempotency_key: str = "",
          now: datetime | None = None, link_wait_s: float | None = 0.0) -> Job:
    """Submit a finished job again (same function, unique, priority and payload, always in
    the background) as a new job whose ``retry_of`` is this one. ``link_wait_s`` None:
    do not look for the tap's row now (the scheduler's tick links it; bulk retries)."""
    now = now or timezone.now()
    key = check_name("idempotency_key", idempotency_key, 100, required=False)
    if key:
        earlier = Job.objects.filter(action_key=key).first()
        if earlier is not None:
            return earlier
    try:
        with transaction.atomic():
            original, data = _retryable(job_id)
            job, conn = submit_recorded(
                function=original.function, payload=data, unique=original.unique,
                priority=original.priority or "normal", background=True, user=user, via=via,
                key=key or None, retry_of=original, action="retry", now=now,
                detail={"requeued": True} if original.dead else None)
            if original.dead:  # a dead letter requeued: it leaves the list, a fresh chain
                Job.objects.filter(pk=original.pk).update(dead=False, recovery="requeued")
    except (Conflict, NotFound, Unavailable) as exc:
        audit.record_refusal(user=user, via=via, action="retry", target=f"job {job_id}",
                             reason=exc.message, code=exc.code)
        raise
    conn.close()
    if link_wait_s is None:
        return job
    return link_submitted(job_id=job.pk, wait_s=link_wait_s)


def schedule_retry(*, job_id: int, run_at: datetime, key: str, user: User, via: str,
                   detail: dict[str, Any] | None = None, now: datetime | None = None) -> Job:
    """Hold a retry of a finished job until ``run_at`` (the one-off schedule path: a row
    with ``state = scheduled`` and ``retry_of``, submitted by the scheduler when due). Used
    by retry policies (``jobs/recovery.py``); ``key`` makes it happen once: the same key
    again returns the retry made the first time. The caller runs it in its transaction
    and gets a Conflict when the job cannot be sent again."""
    now = now or timezone.now()
    earlier = Job.objects.filter(action_key=key).first()
    if earlier is not None:
        return earlier
    original, data = _retryable(job_id)
    with transaction.atomic():
        job = Job.objects.create(
            server=original.server, boot=None, handle="", function=original.function,
            unique=original.unique or f"hq-{uuid.uuid4()}",
            priority=original.priority or "normal", background=True, state=State.SCHEDULED,
            scheduled_for=run_at, retry_of=original, action_key=key, updated_at=now,
            **_payload_fields(data))
        audit.record(user=user, via=via, action="retry_scheduled", target=f"job {job.pk}",
                     detail={"result": "ok", "function": original.function,
                             "retry_of": original.pk, "run_at": run_at.isoformat(),
                             **(detail or {})})
    return job


def discard(*, job_id: int, user: User, via: str) -> Job:
    """Take a dead job off the dead-letter list; it stays in history. Discarding a job
    that is not dead is a 409 (already discarded or requeued, or never dead)."""
    try:
        with transaction.atomic():
            job = _locked(job_id)
            if not job.dead:
                raise Conflict(f"Job {job_id} is not a dead letter"
                               + (f" (it was {job.recovery})"
                                  if job.recovery in ("discarded", "requeued") else "") + ".")
            Job.objects.filter(pk=job.pk).update(dead=False, recovery="discarded")
            job.dead, job.recovery = False, "discarded"
            audit.record(user=user, via=via, action="discard", target=f"job {job.pk}",
                         detail={"result": "ok", "function": job.function,
                                 "death_count": job.death_count})
    except (Conflict, NotFound) as exc:
        audit.record_refusal(user=user, via=via, action="discard", target=f"job {job_id}",
                             reason=exc.message, code=exc.code)
        raise
    return job


def _retryable(job_id: int) -> tuple[Job, bytes]:
    """The job ``job_id`` locked, and the bytes to submit again; a Conflict when it cannot
    be retried (``Job.retry_refusal``)."""
    original = _locked(job_id)
    reason = original.retry_refusal(redacted=is_redacted(original.function))
    if reason:
        raise Conflict(f"Job {job_id} cannot be retried: {reason}.")
    return original, payload_bytes(original.payload)


def _locked(job_id: int) -> Job:
    job = Job.objects.select_for_update(of=("self",)).select_related("server").filter(
        pk=job_id).first()
    if job is None:
        raise NotFound(f"No job with id {job_id}.")
    return job


# -- cancel ---------------------------------------------------------------------------------------


def cancel(*, job_id: int, user: User, via: str, now: datetime | None = None) -> Job:
    """Cancel a job HQ holds (it is never submitted) or a queued one (gearmand's ``cancel
    job``). Cancelling a cancelled job changes nothing."""
    try:
        with transaction.atomic():
            job = _locked(job_id)
            if job.state == State.CANCELLED:
                return job
            reason = job.cancel_refusal()
            if reason:
                raise Conflict(f"Job {job_id} cannot be cancelled: {reason}.")
            detail: dict[str, Any] = {"result": "ok", "was": job.state}
            if job.held_by_hq:
                job.error = "cancelled before HQ submitted it"
            else:
                address = address_of(job.server)
                try:
                    gearmand_cancel(address, job.handle)
                except GearmanError as exc:
                    if "UNKNOWN_JOB" in str(exc):
                        raise Conflict(f"Job {job_id} cannot be cancelled: gearmand no longer "
                                       "holds it (it has been taken by a worker or has "
                                       "ended).") from None
                    raise Unavailable(f"Could not cancel job {job_id}: {exc}") from None
                job.error = "cancelled (gearmand: cancel job)"
                detail.update(handle=job.handle, server=job.server.name)
            job.state = State.CANCELLED
            job.finished_at = now or timezone.now()
            job.updated_at = timezone.now()
            job.save(update_fields=["state", "finished_at", "error", "updated_at"])
            audit.record(user=user, via=via, action="cancel", target=f"job {job.pk}",
                         detail=detail)
    except (Conflict, NotFound, Unavailable) as exc:
        audit.record_refusal(user=user, via=via, action="cancel", target=f"job {job_id}",
                             reason=exc.message, code=exc.code)
        raise
    return job


# -- HQ's row meets the tap's ---------------------------------------------------------------------


def link_submitted(*, job_id: int, wait_s: float = 0.0) -> Job:
    """Make HQ's row for a submitted job and the tap's row for it one row with HQ's id
    (see the module's docstring); waits up to ``wait_s`` for the tap's row. Returns the
    job as it now stands (HQ's own row when the tap has not written one yet)."""
    deadline = time.monotonic() + wait_s
    while True:
        job, linked = _link_once(job_id)
        if linked or job.boot_id is not None or time.monotonic() >= deadline:
            return job
        time.sleep(0.05)


def _link_once(job_id: int) -> tuple[Job, bool]:
    table = Job._meta.db_table
    with transaction.atomic():
        own = Job.objects.select_for_update().filter(pk=job_id).first()
        if own is None or own.boot_id is not None or not own.handle:
            return _get(job_id), False
        since = (own.submitted_at or own.updated_at) - LINK_WINDOW
        tap = (Job.objects.select_for_update()
               .filter(server_id=own.server_id, handle=own.handle, boot__isnull=False,
                       updated_at__gte=since)
               .exclude(pk=own.pk).order_by("-id").first())
        if tap is None:
            return own, False
        with connection.cursor() as cur:
            cur.execute(f'DELETE FROM "{table}" WHERE id = %s', [own.pk])
            if tap.submitted_at is not None and tap.submitted_at < since:
                # gearmand coalesced the submit with a job it held (same unique key)
                log.info("job %s attached to job %s (%s)", own.pk, tap.pk, own.handle)
                ScheduleRun.objects.filter(job_id=own.pk).update(job_id=tap.pk)
                Schedule.objects.filter(last_job_id=own.pk).update(last_job_id=tap.pk)
                return _get(tap.pk), True
            cur.execute(f'UPDATE "{table}" SET retry_of_id = %s WHERE retry_of_id = %s',
                        [own.pk, tap.pk])
            cur.execute(
                f'UPDATE "{table}" SET id = %s, retry_of_id = coalesce(%s, retry_of_id), '
                "scheduled_for = coalesce(%s, scheduled_for), action_key = %s, "
                "payload_text = CASE WHEN payload_text IS NULL AND payload_bin IS NULL "
                "THEN %s ELSE payload_text END, "
                "payload_bin = CASE WHEN payload_text IS NULL AND payload_bin IS NULL "
                "THEN %s ELSE payload_bin END "
                "WHERE id = %s",
                [own.pk, own.retry_of_id, own.scheduled_for, own.action_key,
                 own.payload_text,
                 bytes(own.payload_bin) if own.payload_bin is not None else None, tap.pk])
    return _get(own.pk), True


def _get(job_id: int) -> Job:
    return Job.objects.select_related("server", "boot").get(pk=job_id)


def link_pending(*, now: datetime | None = None, limit: int = 200) -> int:
    """Link HQ's submits still waiting for their tap row, newest first (each in its own
    transaction); how many were linked."""
    now = now or timezone.now()
    ids = list(Job.objects.filter(boot__isnull=True, submitted_at__gte=now - LINK_GIVE_UP)
               .exclude(handle="").order_by("-id").values_list("id", flat=True)[:limit])
    linked = 0
    for job_id in ids:
        if _link_once(job_id)[1]:
            linked += 1
    return linked
