"""Jobs gearmand restored after a restart, linked to their earlier records.

gearmand with a persistent queue (``-q Postgres``, what ``make run`` starts by default)
keeps every background job it holds in a table and, when it starts again, loads them back
under new handles (numbered from 1 again, before any new submit). HQ ends the earlier
record when it sees the restart (``lost``: "gearmand restarted …", from the tracker, the
tap's start-up or ``jobs/reconcile.py``) and first hears of the restored job when a worker
takes it (its JOB_ASSIGN: a job with no submit). Two steps make that one history:

* **Linking** (:func:`link`, in the writer's batch transaction, after the job upsert): a
  job of this batch first seen at its assignment, with no submit, is matched to an earlier
  record of the same server that ended by a restart: same function, same payload, same
  unique key (either side may lack it: a worker on ``GRAB_JOB`` is not told the key, and
  a client that sent none has one only inside gearmand). The payload is compared byte for
  byte as HQ stored it (up to ``HQ_PAYLOAD_MAX``) together with its size on the wire: no
  hash to collide, and only the few rows the (function, state) index finds are compared.
  Equal candidates pair oldest with oldest. The new row gets ``restored_from``; the earlier
  one becomes ``restored`` (not ``lost``) with a reason naming the new handle.
* **Before a worker takes it** (:func:`held_uniques`, used by the recovery engine): a
  background job lost by a restart whose unique key the running gearmand still lists
  (``show unique jobs``) was restored: it becomes ``restored`` at once, so it is neither
  counted lost nor retried by a policy (that would run it twice); its link follows when a
  worker takes it. A job whose unique key HQ does not know (its client sent none) waits
  undecided while gearmand holds jobs of its function HQ has no record of
  (:func:`unrecorded_held`): it may be one of them.

Only what gearmand did not give back stays ``lost``.

Cost: the link statement runs only for batches with a job started of a function that
has such an earlier record (a set refreshed every :data:`REFRESH_S`, and at once when a
batch records a restart), so a tap that saw no restart pays one cheap query a minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg
from django.db.models import Count, Q
from psycopg import sql

from .fold import EventRow
from .models import Job, State

#: how every restart reason begins (broker/boots.py, hq/tap/runner.py, jobs/reconcile.py)
RESTART = "gearmand restarted"
#: an earlier record is looked for this long after its restart (a restored job may wait
#: that long for a worker)
WINDOW = timedelta(days=7)
#: the set of functions with records waiting for their restored job is re-read this often
REFRESH_S = 60.0
WAITING = ("gearmand restarted and restored this job from its queue under a new handle; "
           "HQ links it when a worker takes it")

log = logging.getLogger(__name__)
Conn = psycopg.Connection[Any]
_JOB = sql.Identifier(Job._meta.db_table)

#: earlier records that ended by a restart and have no restored job linked yet
_UNLINKED = sql.SQL(
    "o.server_id = %(server)s AND o.background IS NOT FALSE "
    "AND ((o.state = 'lost' AND o.error LIKE 'gearmand restarted%%') OR o.state = 'restored') "
    "AND o.finished_at > now() - %(window)s "
    "AND NOT EXISTS (SELECT 1 FROM {job} r WHERE r.restored_from_id = o.id)").format(job=_JOB)

FUNCTIONS = sql.SQL("SELECT DISTINCT o.function FROM {job} o WHERE o.state IN "
                    "('lost', 'restored') AND ").format(job=_JOB) + _UNLINKED

#: one pairing pass; {key} is the columns a pair shares, {fresh_if}/{earlier_if} narrow
#: either side (the passes that let one side lack its unique key)
_PASS = sql.SQL("""
WITH fresh AS (
    SELECT j.id, j.boot_id, j.handle, j.function, j."unique" AS uniq, j.payload_size AS size,
           coalesce(j.payload_bin, convert_to(j.payload_text, 'UTF8'), ''::bytea) AS body
    FROM {stage} s JOIN {job} j ON j.boot_id = s.boot_id AND j.handle = s.handle
    WHERE s.first_started_at IS NOT NULL AND s.submitted_at IS NULL
      AND s.function = ANY(%(functions)s) AND j.server_id = %(server)s
      AND j.submitted_at IS NULL AND j.restored_from_id IS NULL
), earlier AS (
    SELECT o.id, o.function, o."unique" AS uniq, o.payload_size AS size,
           coalesce(o.payload_bin, convert_to(o.payload_text, 'UTF8'), ''::bytea) AS body
    FROM {job} o
    WHERE o.function IN (SELECT function FROM fresh)
      AND o.state IN ('lost', 'restored') AND {unlinked}
      AND o.boot_id NOT IN (SELECT boot_id FROM fresh)
), a AS (
    SELECT f.*, row_number() OVER (PARTITION BY {key} ORDER BY f.id) AS n
    FROM fresh f WHERE {fresh_if}
), b AS (
    SELECT e.*, row_number() OVER (PARTITION BY {key} ORDER BY e.id) AS n
    FROM earlier e WHERE {earlier_if}
), pairs AS (
    SELECT a.id AS new_id, a.handle AS new_handle, b.id AS old_id
    FROM a JOIN b USING ({key}, n)
), linked AS (
    UPDATE {job} n SET restored_from_id = p.old_id FROM pairs p WHERE n.id = p.new_id
    RETURNING n.id
)
UPDATE {job} o SET state = 'restored', updated_at = now(),
    error = 'gearmand restarted and restored this job from its queue as ' || p.new_handle
FROM pairs p WHERE o.id = p.old_id
RETURNING o.id
""")

_KEY_EXACT = sql.SQL("function, uniq, size, body")
_KEY_LOOSE = sql.SQL("function, size, body")
_TRUE = sql.SQL("true")
_NO_UNIQUE = sql.SQL("uniq = ''")


def _pass(stage: str, key: sql.SQL, fresh_if: sql.SQL, earlier_if: sql.SQL) -> sql.Composed:
    unlinked = _UNLINKED
    return _PASS.format(stage=sql.Identifier(stage), job=_JOB, unlinked=unlinked, key=key,
                        fresh_if=fresh_if, earlier_if=earlier_if)


def passes(stage: str) -> tuple[sql.Composed, ...]:
    """Same unique key first; then a restored job whose worker was not told its key, then
    an earlier record whose client sent none."""
    return (_pass(stage, _KEY_EXACT, _TRUE, _TRUE),
            _pass(stage, _KEY_LOOSE, _NO_UNIQUE, _TRUE),
            _pass(stage, _KEY_LOOSE, _TRUE, _NO_UNIQUE))


class Linker:
    """One per writer connection: knows which functions have records waiting for their
    restored job, and links the ones a batch brings."""

    def __init__(self, stage: str) -> None:
        self.statements = passes(stage)
        self.functions: frozenset[str] = frozenset()
        self.read_at = float("-inf")
        self.linked = 0

    def refresh(self, conn: Conn, server: int) -> None:
        rows = conn.execute(FUNCTIONS, {"server": server, "window": WINDOW}).fetchall()
        self.functions = frozenset(r[0] for r in rows)
        self.read_at = time.monotonic()

    def link(self, conn: Conn, server: int, rows: Sequence[EventRow]) -> int:
        """Link the restored jobs this batch started (inside the batch's transaction, after
        the job upsert); how many."""
        if time.monotonic() - self.read_at > REFRESH_S or any(
                r.kind == "lost" and r.detail.startswith(RESTART) for r in rows):
            self.refresh(conn, server)
        functions = self.functions
        if not functions or not any(r.kind == "started" and r.function in functions
                                    for r in rows):
            return 0
        params = {"server": server, "window": WINDOW, "functions": list(functions)}
        done = 0
        try:
            with conn.transaction():  # a savepoint: a failed link never costs the batch
                for statement in self.statements:
                    done += conn.execute(statement, params).rowcount
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise  # Postgres is away: the batch is spooled and written again
        except psycopg.Error:
            log.exception("restored jobs of this batch not linked")
            return 0
        self.linked += done
        return done


# -- before a worker takes it (the recovery engine) -------------------------------------------


def lost_by_restart(job: Job) -> bool:
    """A background job HQ recorded lost because gearmand restarted."""
    return (job.state == State.LOST and job.background is not False
            and job.error.startswith(RESTART))


def held_uniques(address: str, timeout: float = 2.0) -> set[str] | None:
    """The unique keys of every job the gearmand at ``address`` holds now (``show unique
    jobs``); None when it does not answer."""
    from broker.admin import AdminClient, AdminError, parse_address

    try:
        host, port = parse_address(address)
        with AdminClient(host, port, timeout=timeout) as admin:
            return {line for line in admin.command("show unique jobs") if line}
    except (AdminError, OSError, ValueError):
        return None


def unrecorded_held(address: str, server_id: int,
                    timeout: float = 2.0) -> dict[str, int] | None:
    """Per function, how many jobs the gearmand at ``address`` holds (``status``) beyond
    the ones HQ has an open record of under its current boot (its pid, ``getpid``): jobs
    it restored that no worker took yet (or jobs HQ missed). None when it does not
    answer."""
    from broker.admin import AdminClient, AdminError, parse_address

    try:
        host, port = parse_address(address)
        with AdminClient(host, port, timeout=timeout) as admin:
            pid = admin.getpid()
            statuses = admin.status()
    except (AdminError, OSError, ValueError):
        return None
    boots = Q(boot__token=pid) | Q(boot__token__startswith=f"{pid}.")
    open_rows = Job.objects.filter(boots, server_id=server_id,
                                   state__in=[State.QUEUED, State.RUNNING]).order_by()
    recorded = dict(open_rows.values("function").annotate(n=Count("id"))
                    .values_list("function", "n"))
    return {s.function: s.total - recorded.get(s.function, 0) for s in statuses
            if s.total > recorded.get(s.function, 0)}


def mark_waiting(job_id: int) -> None:
    """The job's restored copy is held by gearmand (not yet taken by a worker)."""
    Job.objects.filter(pk=job_id, state=State.LOST).update(state=State.RESTORED,
                                                           error=WAITING)


# -- reads -------------------------------------------------------------------------------------


def history(job: Job, limit: int = 20) -> list[Job]:
    """The records of this job across gearmand restarts, oldest first (this one included;
    a single record when it never survived a restart)."""
    records = [job]
    current = job
    while current.restored_from_id is not None and len(records) < limit:
        earlier = (Job.objects.select_related("boot").filter(pk=current.restored_from_id)
                   .first())
        if earlier is None:
            break
        records.insert(0, earlier)
        current = earlier
    current = job
    while len(records) < limit:
        later = Job.objects.select_related("boot").filter(restored_from=current.pk).first()
        if later is None:
            break
        records.append(later)
        current = later
    return records
