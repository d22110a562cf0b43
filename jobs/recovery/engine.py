"""Automatic recovery: retry policies with backoff, dead letters, job of death.

gearmand forgets a failed background job the moment it fails. HQ records every job of
every client, so it can retry them for all of them. :func:`sweep` (every scheduler tick)
decides, once, for each job that ended ``failed`` or ``lost``:

* **The outbox is a partial index.** A job the tap writes as failed or lost has
  ``recovery = ""`` (the column's database default: the tap's upsert never names it), so
  it is in ``job_recovery_due`` (``state IN (failed, lost) AND recovery = ''``) until the
  transaction that decides on it sets ``recovery`` — nothing is missed after a restart (the
  index is the to-do list, whatever was down), and nothing is decided twice: a job is
  claimed with ``SELECT … FOR UPDATE SKIP LOCKED`` (:data:`CLAIM_BATCH` at a time, each
  decided in a savepoint of the claiming transaction) and leaves the index in the
  transaction that schedules its retry, whose idempotency key ``policy:<job>:<run>`` is
  unique as well.
  Only HQ-owned columns (``dead``, ``death_count``, ``recovery``) of the tap's row are
  updated, never its key (``jobs/services.py``).
* A job younger than :data:`GRACE` (by the tap's ``updated_at``, the database clock) waits
  a tick: a retry HQ submitted may have failed before its row was linked to the tap's,
  which is linked first so the chain is known.
* **The chain** is the job and the jobs it retries through policy retries (``retry_of``
  with a ``policy:`` key); a requeue by hand starts a fresh chain. The first enabled
  :class:`RetryPolicy` (by ``order``) whose glob matches the function decides: an end it
  does not count, or a foreground job (its client is waiting: never retried behind its
  back), is left alone; a chain that has run ``max_attempts`` times, or whose runs killed
  ``HQ_JOB_OF_DEATH`` workers (``worker_lost`` events), ends dead; else the job is
  retried after ``min(base · 2^(n-1), max)`` seconds (± jitter) through the scheduler's
  one-off path (``services.schedule_retry``: durable, submitted once when due).
* **No retry storm**: a retry is held for the first second from its due time that has
  fewer than ``HQ_RETRY_MAX_PER_S`` (default 100) policy retries held for it; the excess is
  delayed, never dropped, and the added delay is in the audit row (``held_by_cap_s``).
* Every automatic action is audited with ``via: policy`` (``detail.by = "policy"`` is
  kept for readers of older rows, which say ``via: system``).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Count, Exists, OuterRef
from django.db.models.functions import Now
from django.utils import timezone

from hq.errors import Conflict, NotFound

from .. import restored, services
from ..models import Job, JobEvent, RetryOn, RetryPolicy, State, job_of_death_limit

log = logging.getLogger(__name__)

#: a finished job is decided on once its row is this old (its HQ retry row is linked)
GRACE = timedelta(seconds=1)
#: jobs claimed (and decided) per transaction by one sweep
CLAIM_BATCH = 100
#: a chain is followed this far back at most
CHAIN_MAX = 1000
#: the prefix of the idempotency key of a policy retry (it marks a chain's links)
POLICY_KEY = "policy:"
#: the advisory lock that serialises the choice of a retry's second (HQ_RETRY_MAX_PER_S)
SLOT_LOCK = 0x48515254  # "HQRT"
#: a retry is pushed at most this far past its due time by the cap
SLOT_SEARCH_S = 86400
#: what ``recovery`` says
RETRY, DEAD, NONE, REQUEUED, DISCARDED = "retry", "dead", "none", "requeued", "discarded"
#: how the audit log names the door of every automatic recovery action
VIA = "policy"
#: a sweep outcome (not stored in ``recovery``): the job was lost by a restart, but the
#: gearmand running now holds it (restored from its queue): it is not lost, not retried
RESTORED = "restored"
#: how long a job lost by a restart may wait, undecided, to be known restored or not
RESTORE_ASK_FOR = timedelta(hours=1)


def death_limit() -> int:
    return job_of_death_limit()


def policy_for(function: str, policies: list[RetryPolicy] | None = None) -> RetryPolicy | None:
    """The first enabled policy (by order) whose glob matches ``function``."""
    if policies is None:
        policies = list(RetryPolicy.objects.filter(enabled=True).order_by("order", "id"))
    for policy in policies:
        if policy.enabled and fnmatch.fnmatchcase(function, policy.function):
            return policy
    return None


def is_policy_retry(job: Job) -> bool:
    return bool(job.action_key and job.action_key.startswith(POLICY_KEY)
                and job.retry_of_id is not None)


def chain_of(job: Job) -> list[Job]:
    """The job's retry chain, first run first: the job and the jobs it retries through
    policy retries."""
    chain = [job]
    current = job
    while is_policy_retry(current) and current.retry_of_id is not None \
            and len(chain) < CHAIN_MAX:
        earlier = Job.objects.filter(pk=current.retry_of_id).first()
        if earlier is None:
            break
        chain.append(earlier)
        current = earlier
    chain.reverse()
    return chain


def deaths(chain: list[Job]) -> int:
    """Workers that died holding a run of the chain (``worker_lost`` events)."""
    total = 0
    for job in chain:
        if job.boot_id is not None:
            total += JobEvent.objects.filter(boot_id=job.boot_id, handle=job.handle,
                                             kind="worker_lost").count()
    return total


def end_of(job: Job) -> str:
    """How the job ended, as ``retry_on`` names it: lost, exception or failed."""
    if job.state == State.LOST:
        return RetryOn.LOST
    if job.boot_id is not None and JobEvent.objects.filter(
            boot_id=job.boot_id, handle=job.handle, kind="exception").exists():
        return RetryOn.EXCEPTION
    return RetryOn.FAILED


def delay_s(policy: RetryPolicy, runs: int, rng: random.Random | None = None) -> float:
    """Seconds before the next run after ``runs`` runs: ``min(base · 2^(runs-1), max)``,
    ± up to half of it with jitter."""
    delay = policy.delay_s(runs)
    if policy.jitter and delay > 0:
        delay += (rng or random).uniform(-delay / 2, delay / 2)
    return max(delay, 0.0)


@dataclass
class Sweep:
    retried: int = 0
    dead: int = 0
    left: int = 0  # no policy, an end not counted, foreground
    linked: int = 0
    tried_links: set[int] = field(default_factory=set)
    errors: set[int] = field(default_factory=set)  # jobs whose decision failed this sweep
    requeued: int = 0  # dead letters found retried (settle_requeued)
    decisions: list[tuple[int, str]] = field(default_factory=list)
    restored: int = 0
    deferred: set[int] = field(default_factory=set)  # lost by a restart, gearmand silent
    #: per server id, the unique keys its gearmand holds now (None: it did not answer)
    held: dict[int, set[str] | None] = field(default_factory=dict)
    #: per server id, per function, jobs its gearmand holds that HQ has no open record of
    unrecorded: dict[int, dict[str, int] | None] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"retried {self.retried}, dead {self.dead}, left alone {self.left}"
                + (f", linked {self.linked}" if self.linked else "")
                + (f", restored by gearmand {self.restored}" if self.restored else ""))


def _unlinked_submits(jobs: list[Job]) -> dict[tuple[int, str], int]:
    """HQ's own rows for the submits these tap rows record, when not linked yet, by
    (server id, handle): one query for a claimed batch."""
    handles = {job.handle for job in jobs if job.boot_id is not None and job.handle}
    if not handles:
        return {}
    rows = (Job.objects.filter(boot__isnull=True, handle__in=handles,
                               server_id__in={job.server_id for job in jobs})
            .values_list("server_id", "handle", "id").order_by("id"))
    return {(server, handle): pk for server, handle, pk in rows}  # the newest wins


def _claim(skip: set[int], size: int) -> list[Job]:
    """Up to ``size`` undecided failed or lost jobs, oldest first, locked for this
    transaction; rows another sweep holds are skipped, not waited for."""
    return list(Job.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("server")
                .filter(state__in=[State.FAILED, State.LOST], recovery="",
                        updated_at__lt=Now() - GRACE)
                .exclude(pk__in=skip)
                .order_by("id")[:size])


def decide_batch(*, now: datetime, policies: list[RetryPolicy], out: Sweep,
                 size: int = CLAIM_BATCH) -> int:
    """Claim up to ``size`` of the oldest undecided failed or lost jobs in one transaction
    and decide on each (a savepoint each); how many were claimed (0: none left)."""
    to_link: list[int] = []
    with transaction.atomic():
        jobs = _claim(out.errors | out.deferred, size)
        submits = _unlinked_submits(jobs)
        for job in jobs:
            own_id = submits.get((job.server_id, job.handle)) if job.boot_id else None
            try:
                with transaction.atomic():
                    _decide_claimed(job, own_id, now=now, policies=policies, out=out,
                                    to_link=to_link)
            except DatabaseError:
                # one job that cannot be decided (its savepoint rolled back: it stays
                # undecided for the next sweep) never holds up the others
                log.exception("recovery could not decide on job %s", job.pk)
                out.errors.add(job.pk)
    # HQ submitted these jobs (retries, say): link their rows first (outside the claim, in
    # the order link_submitted locks them); the next batch decides on them
    for own_id in to_link:
        out.tried_links.add(own_id)
        if services.link_submitted(job_id=own_id).boot_id is not None:
            out.linked += 1
    return len(jobs)


def _decide_claimed(job: Job, own_id: int | None, *, now: datetime,
                    policies: list[RetryPolicy], out: Sweep, to_link: list[int]) -> None:
    held = _restored_by_gearmand(job, out, now)
    if held is None:  # gearmand does not answer yet: ask again next sweep
        out.deferred.add(job.pk)
        return
    if held:
        restored.mark_waiting(job.pk)
        _count(out, job.pk, RESTORED)
        return
    if own_id is None or own_id in out.tried_links:
        _count(out, job.pk, _decide(job, now=now, policies=policies))
    else:
        to_link.append(own_id)


def _restored_by_gearmand(job: Job, out: Sweep, now: datetime) -> bool | None:
    """Lost by a restart, yet held by the gearmand running now: restored from its
    persistent queue under a new handle (``jobs/restored.py``): its unique key is listed
    by ``show unique jobs``. None: cannot tell yet, ask again next sweep (for at most
    :data:`RESTORE_ASK_FOR`; a retry now could run the job twice): gearmand does not
    answer, or the job has no unique key HQ knows and gearmand holds jobs of its function
    HQ has no open record of (restored ones no worker took yet: the writer links them when
    one does)."""
    if not restored.lost_by_restart(job) or not job.server.address:
        return False
    key = job.server_id
    if job.unique:
        if key not in out.held:
            out.held[key] = restored.held_uniques(job.server.address)
        held = out.held[key]
        known = None if held is None else job.unique in held
    else:
        if key not in out.unrecorded:
            out.unrecorded[key] = restored.unrecorded_held(job.server.address, key)
        pending = out.unrecorded[key]
        known = None if pending is None or pending.get(job.function, 0) > 0 else False
    if known is None and now - (job.finished_at or now) >= RESTORE_ASK_FOR:
        return False
    return known


def _count(out: Sweep, job_id: int, outcome: str) -> None:
    out.decisions.append((job_id, outcome))
    if outcome == RESTORED:
        out.restored += 1
    elif outcome == RETRY:
        out.retried += 1
    elif outcome == DEAD:
        out.dead += 1
    else:
        out.left += 1


def _decide(job: Job, *, now: datetime, policies: list[RetryPolicy]) -> str:
    if job.background is not True:
        return _mark(job, NONE)
    policy = policy_for(job.function, policies)
    if policy is None or end_of(job) not in policy.retry_on:
        return _mark(job, NONE)
    chain = chain_of(job)
    died = deaths(chain)
    runs = len(chain)
    info: dict[str, Any] = {"by": "policy", "policy": policy.pk, "run": runs,
                            "of": policy.max_attempts}
    if died >= death_limit():
        return _die(job, died, {**info, "reason": "job of death", "deaths": died})
    if runs >= policy.max_attempts:
        return _die(job, died, {**info, "reason": "attempts spent"})
    wait = delay_s(policy, runs)
    run_at = rate_slot(now + timedelta(seconds=wait))
    if run_at > now + timedelta(seconds=wait):
        info["held_by_cap_s"] = round((run_at - now).total_seconds() - wait, 3)
    try:
        with transaction.atomic():
            services.schedule_retry(
                job_id=job.pk, run_at=run_at,
                key=f"{POLICY_KEY}{job.pk}:{runs + 1}", user=None, via=VIA,
                detail={**info, "delay_s": round(wait, 3)}, now=now)
    except (Conflict, NotFound) as exc:
        return _die(job, died, {**info, "reason": exc.message})
    return _mark(job, RETRY, death_count=died)


def retry_cap() -> int:
    """``HQ_RETRY_MAX_PER_S``: policy retries submitted per second at most (default 100)."""
    value = getattr(settings, "HQ_RETRY_MAX_PER_S", None)
    if value is None:
        value = os.environ.get("HQ_RETRY_MAX_PER_S", "") or 100
    return max(int(value), 1)


def rate_slot(due: datetime) -> datetime:
    """The first second from ``due`` on that has fewer than :func:`retry_cap` policy
    retries held for it: a retry storm is spread out, later, never dropped. Slots are
    chosen one decision at a time (a transaction-scoped advisory lock, released when the
    deciding transaction commits), so racing sweeps never overfill a second."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", [SLOT_LOCK])
    cap = retry_cap()
    start = due.replace(microsecond=0)
    held = (Job.objects.filter(boot__isnull=True, state=State.SCHEDULED,
                               action_key__startswith=POLICY_KEY))
    for step in range(SLOT_SEARCH_S):
        second = start + timedelta(seconds=step)
        count = held.filter(scheduled_for__gte=second,
                            scheduled_for__lt=second + timedelta(seconds=1)).count()
        if count < cap:
            return due if step == 0 else second
    return start + timedelta(seconds=SLOT_SEARCH_S)


def _mark(job: Job, outcome: str, **more: Any) -> str:
    Job.objects.filter(pk=job.pk).update(recovery=outcome, **more)
    return outcome


def _die(job: Job, died: int, detail: dict[str, Any]) -> str:
    from hq import audit

    Job.objects.filter(pk=job.pk).update(recovery=DEAD, dead=True, death_count=died)
    audit.record(user=None, via=VIA, action="dead_letter", target=f"job {job.pk}",
                 detail={"result": "ok", "function": job.function, **detail})
    return DEAD


def settle_requeued() -> int:
    """Dead letters that were retried by any path (a bulk retry by filter writes its rows
    itself, bypassing ``services.retry``) leave the list as requeued: a dead letter never
    has a policy retry, so any retry of it is a requeue. How many."""
    requeued = Job.objects.filter(retry_of=OuterRef("pk"))
    return Job.objects.filter(dead=True).filter(Exists(requeued)).update(
        dead=False, recovery=REQUEUED)


def sweep(*, now: datetime | None = None, max_jobs: int = 2000, max_s: float = 5.0) -> Sweep:
    """Decide on the failed and lost jobs not decided yet (one scheduler tick's worth)."""
    now = now or timezone.now()
    out = Sweep()
    out.requeued = settle_requeued()
    policies = list(RetryPolicy.objects.filter(enabled=True).order_by("order", "id"))
    stop_at = time.monotonic() + max_s
    done = 0
    while done < max_jobs and time.monotonic() < stop_at:
        claimed = decide_batch(now=now, policies=policies, out=out,
                               size=min(CLAIM_BATCH, max_jobs - done))
        if not claimed:
            break
        done += claimed
    return out


# -- reads ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainView:
    """A job's place in its retry chain, for its page: "attempt 2 of 5, next in 40 s"."""

    run: int
    of: int | None  # the policy's max_attempts (None: no policy matches now)
    jobs: list[Job]
    next_job: Job | None  # the scheduled retry of this job, if any
    next_in_s: float | None


def chain_view(job: Job, *, now: datetime | None = None) -> ChainView:
    now = now or timezone.now()
    chain = chain_of(job)
    later = list(Job.objects.filter(retry_of=job.pk, action_key__startswith=POLICY_KEY)
                 .order_by("id")[:1])
    following = later[0] if later else None
    policy = policy_for(job.function)
    next_in = None
    if following is not None and following.state == State.SCHEDULED \
            and following.scheduled_for is not None:
        next_in = max((following.scheduled_for - now).total_seconds(), 0.0)
    return ChainView(run=len(chain), of=policy.max_attempts if policy else None, jobs=chain,
                     next_job=following, next_in_s=next_in)


def dead_letters_by_function(*, since: datetime) -> dict[tuple[int, str], int]:
    """Dead letters per (server id, function) whose job finished since ``since``."""
    rows = (Job.objects.filter(dead=True, finished_at__gte=since)
            .values("server_id", "function").annotate(n=Count("id")))
    return {(r["server_id"], r["function"]): r["n"] for r in rows}


def jobs_of_death_by_function() -> dict[tuple[int, str], int]:
    """Dead letters flagged job of death, per (server id, function)."""
    rows = (Job.objects.filter(dead=True, death_count__gte=death_limit())
            .values("server_id", "function").annotate(n=Count("id")))
    return {(r["server_id"], r["function"]): r["n"] for r in rows}
