"""Correlation state machine: decoded packets per connection in, job lifecycle events out.

The tracker sees both directions of every connection to one gearmand and knows nothing of
sockets or databases. It pairs each SUBMIT_JOB* with the JOB_CREATED that answers it (per
connection, first in first out), follows the job to the worker connection that is assigned
it, and turns WORK_* packets into events. A job is named by (boot, handle): gearmand
restarts its handle counter at 1 when it restarts, so a counter that goes back starts a new
boot (see :mod:`broker.boots`).

What it cannot know it does not invent: a job that was already queued or running when the
capture started shows up with the facts later packets carry (handle, function, worker,
result) and nothing else.

What a packet says is believed only where gearmand would believe it (counted in
``counters``, never raised):

- a WORK_* reply (complete, fail, exception, status, data, warning) counts only from the
  worker connection gearmand assigned the job to. From another connection it is
  ``forged``, unless HQ may have missed that connection's assignment: it lost bytes of
  that connection, or joined it after it began and has not seen the job assigned anywhere;
- gearmand's own WORK_* to a client counts only on a connection waiting for the job;
- a packet whose magic contradicts its direction (``\\0RES`` from a peer) is
  ``misdirected``;
- every string, number and time is made storable by a :class:`~broker.values.Cleaner`,
  and what the tracker keeps is bounded by :mod:`broker.limits`.

The price of the first rule: when the copy of a JOB_ASSIGN is lost and the loss is
reported only after the worker's reply (a proxy copy dropped under overload is reported
at that direction's next bytes; a capture hole waits ``gap_timeout``), the reply is
counted ``forged`` and the job's end is left to reconciliation with ``show jobs``.
"""

from __future__ import annotations

from collections.abc import Callable
from sys import intern
from typing import Final

from .adminwatch import looks_like_reply
from .boots import BootTracking, handle_number
from .jobstate import Conn, Event, Job, Submit
from .limits import (
    FUNCTION_MAX,
    INT4_MAX,
    JOBS_MAX,
    PENDING_MAX,
    PENDING_PAYLOAD_BUDGET,
    PENDING_TOTAL,
    PID_MAX,
    UNIQUE_MAX,
    WORKER_MAX,
)
from .protocol import ARG_COUNT, AdminLine, Packet, PacketType
from .stream import ConnKey
from .values import Cleaner, note
from .workers import ABILITY_TYPES, WorkerWatch

__all__ = ["COUNTERS", "Event", "Tracker", "handle_number"]

T = PacketType

PRIORITY: Final[dict[int, tuple[str, bool]]] = {
    T.SUBMIT_JOB: ("normal", False),
    T.SUBMIT_JOB_BG: ("normal", True),
    T.SUBMIT_JOB_HIGH: ("high", False),
    T.SUBMIT_JOB_HIGH_BG: ("high", True),
    T.SUBMIT_JOB_LOW: ("low", False),
    T.SUBMIT_JOB_LOW_BG: ("low", True),
    T.SUBMIT_JOB_EPOCH: ("normal", True),
    T.SUBMIT_JOB_SCHED: ("normal", True),
    T.SUBMIT_REDUCE_JOB: ("normal", False),
    T.SUBMIT_REDUCE_JOB_BACKGROUND: ("normal", True),
}
ASSIGN_TYPES: Final = frozenset({T.JOB_ASSIGN, T.JOB_ASSIGN_UNIQ, T.JOB_ASSIGN_ALL})
FINISH_KIND: Final[dict[int, str]] = {
    T.WORK_COMPLETE: "completed", T.WORK_FAIL: "failed", T.WORK_EXCEPTION: "exception",
}
PROGRESS_KIND: Final[dict[int, str]] = {T.WORK_DATA: "data", T.WORK_WARNING: "warning"}
# Plain ints for the comparisons on every packet: reading an IntEnum member off its class
# goes through a Python-level descriptor (enum's property) each time.
_WORK_STATUS: Final = int(T.WORK_STATUS)
_SET_CLIENT_ID: Final = int(T.SET_CLIENT_ID)
_JOB_CREATED: Final = int(T.JOB_CREATED)
_ERROR: Final = int(T.ERROR)
_SUBMIT_JOB_EPOCH: Final = int(T.SUBMIT_JOB_EPOCH)
_JOB_ASSIGN: Final = int(T.JOB_ASSIGN)

#: The tracker's counters (the Cleaner adds values_cleaned, bad_numbers, bad_epochs).
COUNTERS = (
    "packets", "events", "unmatched_created", "unmatched_submits", "boots", "forged",
    "misdirected", "malformed", "pending_unstored", "payloads_dropped", "jobs_evicted",
    "admin_overflow", "late_assignments",
)


class Tracker(BootTracking):
    """Feed it with :meth:`packet`, :meth:`opened` and :meth:`closed`; events go to ``emit``."""

    def __init__(
        self, emit: Callable[[Event], None], *, boot: str = "0", payload_max: int = 65536
    ) -> None:
        self.emit = emit
        self.payload_max = payload_max
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.clean = Cleaner(self.counters)
        super().__init__(note(boot, PID_MAX))
        self._conns: dict[ConnKey, Conn] = {}
        self._pending_count = 0  # submits stored in every connection's Pending
        self._pending_bytes = 0  # and their payload bytes
        self._now = 0.0  # the latest time seen, for a close the source did not report
        self._ending = False  # the source stops watching: its closes are not gearmand's
        #: workers' abilities from CAN_DO & co; set ``workers.emit`` to receive the facts
        self.workers = WorkerWatch(self.clean)

    # -- connection lifecycle -------------------------------------------------------------

    def opened(self, key: ConnKey, ts: float | None = None, *, from_start: bool = False) -> None:
        """A connection begins. ``from_start``: the byte source saw it begin (so HQ sees
        every packet on it); False when it joined a connection already open, or cannot say.
        A connection of the same name still open is over: it is closed first."""
        if key in self._conns:
            self.closed(key, self._now if ts is None else ts)
        self._conns[key] = Conn(key, from_start)

    def capture_ending(self) -> None:
        """The source stops watching: the closes that follow are not gearmand's. A job
        running on a worker still connected is not lost, a foreground client still
        waiting has not abandoned its job: no events from those closes (the next tap joins
        the connections and sees how the jobs end)."""
        self._ending = True
        self.workers.capture_ending()

    def closed(self, key: ConnKey, ts: float) -> None:
        conn = self._conns.pop(key, None)
        self.workers.closed(key, conn, ts)
        if conn is None:
            return
        self._drop_pending(conn)
        if self._ending:
            return
        for handle in sorted(conn.holding):
            job = self._jobs.get(handle)
            if job is not None:
                job.started = False
                job.holder = None
                self._emit("worker_lost", handle, ts, conn, worker=conn.worker_name)
        for handle in sorted(conn.waiting):
            job = self._jobs.get(handle)
            if job is None:
                continue
            job.drop_waiter(key)
            if job.waiters:
                continue
            was = "running" if job.started else "queued"
            self._emit("abandoned", handle, ts, conn, detail=was)
            if not job.started and not job.background:
                # gearmand drops a foreground job nobody waits for before it has started.
                self._forget(handle, ts=ts)

    def gap(self, key: ConnKey) -> None:
        """Bytes of this connection were lost. Its pending submits cannot be paired with
        replies any more (one side of the pairing may be missing): forget them, so later
        JOB_CREATEDs go unmatched instead of being paired with the wrong submit."""
        conn = self._conns.get(key)
        if conn is not None:
            self._drop_pending(conn)
            conn.admin.lost()
            conn.gaps += 1

    def active_handles(self) -> list[str]:
        return list(self._jobs)

    def sizes(self) -> dict[str, int]:
        """How much the tracker holds now (each bounded by broker.limits)."""
        return {
            "conns": len(self._conns), "jobs": len(self._jobs),
            "finished": len(self._finished), "pending": self._pending_count,
            "pending_bytes": self._pending_bytes,
        }

    # -- packets --------------------------------------------------------------------------

    def packet(
        self, key: ConnKey, item: Packet | AdminLine, ts: float, from_peer: bool | None = None
    ) -> None:
        """One decoded item of a connection. ``from_peer``: its direction as the byte source
        saw it (None: trust the packet's magic, and guess an admin line's direction)."""
        conn = self._conns.get(key)
        if conn is None:
            conn = self._conns[key] = Conn(key)
        self._now = ts
        self.counters["packets"] += 1
        if isinstance(item, AdminLine):
            self._admin(conn, item.text, ts, from_peer)
        elif from_peer is not None and item.request is not from_peer:
            self.counters["misdirected"] += 1
        elif len(item.args) != ARG_COUNT.get(item.type):
            self.counters["malformed"] += 1
        elif item.request:
            self._request(conn, item, ts)
        else:
            self._response(conn, item, ts)

    def _request(self, conn: Conn, pkt: Packet, ts: float) -> None:
        ptype = pkt.type
        args = pkt.args
        if ptype in PRIORITY:
            if conn.gaps and ts < conn.last_created:
                # Held behind a capture hole while gearmand's answers went on: its
                # JOB_CREATED (answers come in order) went by unmatched. Queued, it would
                # be paired with a later job's.
                self.counters["unmatched_submits"] += 1
            else:
                self._queue_submit(conn, self._submit(ptype, args, ts))
        elif ptype in FINISH_KIND:
            handle = self.clean.handle(args[0])
            if self._may_reply(conn, handle):
                self._finish(conn, FINISH_KIND[ptype], handle, args, ts)
        elif ptype == _WORK_STATUS:
            handle = self.clean.handle(args[0])
            if self._may_reply(conn, handle):
                self._emit("status", handle, ts, conn, numerator=self.clean.int8(args[1]),
                           denominator=self.clean.int8(args[2]))
        elif ptype in PROGRESS_KIND:
            handle = self.clean.handle(args[0])
            if self._may_reply(conn, handle):
                data, size = self._cap(args[1])
                self._emit(PROGRESS_KIND[ptype], handle, ts, conn, data=data, size=size)
        elif ptype == _SET_CLIENT_ID:
            conn.client_id = self.clean.name(args[0], WORKER_MAX)
            self.workers.renamed(conn, ts)
        elif ptype in ABILITY_TYPES:
            self.workers.ability(conn, ptype, args, ts)

    def _response(self, conn: Conn, pkt: Packet, ts: float) -> None:
        ptype = pkt.type
        if ptype == _JOB_CREATED:
            self._created(conn, self.clean.handle(pkt.args[0]), ts)
        elif ptype in ASSIGN_TYPES:
            self._assigned(conn, pkt, ts)
        elif ptype == _ERROR and conn.pending:
            self._next_submit(conn)  # the submit was refused (e.g. SUBMIT_JOB_SCHED)
        elif ptype in FINISH_KIND:
            handle = self.clean.handle(pkt.args[0])
            job = self._jobs.get(handle)
            if job is None or handle in self._finished:
                return
            if conn.key in job.waiters or conn.blind:
                # gearmand itself ended the job (--job-retries exhausted).
                self._finish(conn, FINISH_KIND[ptype], handle, pkt.args, ts, by_server=True)
            else:
                self.counters["forged"] += 1  # gearmand tells only the clients that wait

    def _admin(self, conn: Conn, text: bytes, ts: float, from_peer: bool | None) -> None:
        if from_peer is None:
            from_peer = not looks_like_reply(text)
        if from_peer:
            if not conn.admin.command(text):
                self.counters["admin_overflow"] += 1
            return
        raw = conn.admin.reply(text)
        if raw is None:
            return
        handle = self.clean.handle(raw)
        if handle in self._jobs:
            self._emit("cancelled", handle, ts, conn, detail="cancel job (admin)")
            self._forget(handle, ts=ts)

    def _may_reply(self, conn: Conn, handle: str) -> bool:
        """May this connection's WORK_* for ``handle`` be believed? (see the module doc)"""
        if handle in conn.holding:
            return True
        job = self._jobs.get(handle)
        if job is None and handle in self._finished:
            return False  # a late duplicate (WORK_FAIL after WORK_EXCEPTION): not forged
        if job is not None and job.holder is not None:
            ok = False  # another connection holds it
        elif conn.gaps:
            ok = True  # its assignment may have been in the bytes HQ lost
        else:
            ok = not conn.from_start and (job is None or not job.assigned)
        if not ok:
            self.counters["forged"] += 1
        return ok

    # -- the steps of a job ---------------------------------------------------------------

    def _submit(self, ptype: int, args: tuple[bytes, ...], ts: float) -> Submit:
        priority, background = PRIORITY[ptype]
        epoch, why = self.clean.epoch(args[2]) if ptype == _SUBMIT_JOB_EPOCH else (None, "")
        data, size = self._cap(args[-1])
        clean = self.clean
        # interned: 100,000 open jobs of one function share one string, not 100,000 copies
        function = intern(clean.name(args[0], FUNCTION_MAX))
        return Submit(function, clean.name(args[1], UNIQUE_MAX),
                      priority, background, epoch, data, size, ts, why)

    def _created(self, conn: Conn, handle: str, ts: float) -> None:
        conn.last_created = max(conn.last_created, ts)
        sub = self._next_submit(conn) if conn.pending else None
        if sub is None:
            self.counters["unmatched_created"] += 1
            return
        self._check_counter(handle, ts)
        if not conn.gaps and self._reused(handle, sub.function, sub.unique):
            self._restarted(ts, "gearmand restarted (a handle came back for another job)")
        job = self._jobs.get(handle)
        if not sub.background and job is not None:
            job.add_waiter(conn.key)
            conn.waiting.add(handle)
        if job is not None and job.submitted:
            self._emit("attached", handle, sub.ts, conn, background=sub.background)
            return
        if job is None and handle in self._finished:
            # the job ran and ended before its JOB_CREATED was on the wire (a fast worker)
            self._submitted(conn, handle, sub)
            return
        if job is None:
            # gearmand may hand the job to a worker before this JOB_CREATED is on the
            # wire; then the job is already known from its assignment.
            job = self._new_job(handle, Job(sub.function, sub.background, sub.unique))
        job.submitted = True
        job.background = sub.background
        if not sub.background:
            job.add_waiter(conn.key)
            conn.waiting.add(handle)
        self._submitted(conn, handle, sub)

    def _submitted(self, conn: Conn, handle: str, sub: Submit) -> None:
        # keywords spelled out rather than a ** dict: a compiled build (mypyc) then calls
        # _emit natively instead of through its Python wrapper
        self._emit("submitted", handle, sub.ts, conn, function=sub.function,
                   unique=sub.unique, priority=sub.priority, background=sub.background,
                   epoch=sub.epoch, data=sub.payload, size=sub.size, detail=sub.note)

    def _assigned(self, conn: Conn, pkt: Packet, ts: float) -> None:
        args = pkt.args
        handle = self.clean.handle(args[0])
        function = intern(self.clean.name(args[1], FUNCTION_MAX))
        unique = self.clean.name(args[2], UNIQUE_MAX) if pkt.type != _JOB_ASSIGN else None
        job = self._jobs.get(handle)
        if job is None and self._late_assignment(handle, function, unique, ts):
            return
        if job is None:
            self._check_assigned(handle, function, unique, ts)
            # Queued before the capture began (or the first job of a new boot): record
            # what the assignment tells us.
            job = self._new_job(handle, Job(function, None, unique))
            self._finished.pop(handle, None)
        elif job.holder is not None and job.holder != conn.key:
            self._release(handle, job.holder)  # reassigned: the old holder's death was missed
        job.started = job.assigned = True
        job.holder = conn.key
        conn.holding.add(handle)
        data, size = self._cap(args[-1])
        self._emit(
            "started", handle, ts, conn, function=function, unique=unique,
            worker=conn.worker_name, data=data, size=size,
        )

    def _late_assignment(self, handle: str, function: str, unique: str | None,
                         ts: float) -> bool:
        """An assignment captured before the same job's end, delivered after it: a hole
        in gearmand → worker bytes held that direction back while the worker's answer came
        through (its reply was believed: ``conn.gaps``). Starting the job again would leave
        it running, then queued when the worker leaves; it is counted and dropped."""
        ended = self._finished.get(handle)
        if ended is None or ts > ended[2] or self._reused(handle, function, unique):
            return False
        self.counters["late_assignments"] += 1
        return True

    def _finish(
        self, conn: Conn, kind: str, handle: str, args: tuple[bytes, ...], ts: float,
        by_server: bool = False,
    ) -> None:
        data, size = self._cap(args[1]) if len(args) > 1 else (None, 0)
        conn.holding.discard(handle)
        job = self._jobs.get(handle)
        holder = self._conns.get(job.holder) if job is not None and job.holder else None
        if by_server and holder is not None:
            # gearmand gave up after the worker died: that death may not be seen yet
            holder.holding.discard(handle)
            self._emit("worker_lost", handle, ts, holder, worker=holder.worker_name)
        detail = ""
        if by_server and kind == "failed":
            detail = "gearmand gave up on the job (job retries exhausted)"
        self._emit(kind, handle, ts, conn, worker=None if by_server else conn.worker_name,
                   data=data, size=size, detail=detail)
        self._forget(handle, ts=ts)

    # -- bounded bookkeeping --------------------------------------------------------------

    def _new_job(self, handle: str, job: Job) -> Job:
        if len(self._jobs) >= JOBS_MAX:
            oldest = next(iter(self._jobs))
            self._forget(oldest, remember=False)
            self.counters["jobs_evicted"] += 1
        self._jobs[handle] = job
        return job

    def _release(self, handle: str, key: ConnKey) -> None:
        holder = self._conns.get(key)
        if holder is not None:
            holder.holding.discard(handle)

    def _forget_job(self, handle: str) -> Job | None:
        job = self._jobs.pop(handle, None)
        if job is not None:
            for key in job.waiters:
                waiter = self._conns.get(key)
                if waiter is not None:
                    waiter.waiting.discard(handle)
            if job.holder is not None:
                self._release(handle, job.holder)
        return job

    def _queue_submit(self, conn: Conn, sub: Submit) -> None:
        pending = conn.pending
        if (pending.unstored or len(pending.items) >= PENDING_MAX
                or self._pending_count >= PENDING_TOTAL):
            self.counters["pending_unstored"] += 1
            pending.push(None)
            return
        if sub.payload and self._pending_bytes + len(sub.payload) > PENDING_PAYLOAD_BUDGET:
            sub.payload = b""  # the size stays: the job is recorded with its payload cut
            self.counters["payloads_dropped"] += 1
        pending.push(sub)
        self._pending_count += 1
        self._pending_bytes += len(sub.payload)

    def _next_submit(self, conn: Conn) -> Submit | None:
        sub = conn.pending.pop()
        if sub is not None:
            self._pending_count -= 1
            self._pending_bytes -= len(sub.payload)
        return sub

    def _drop_pending(self, conn: Conn) -> None:
        self._pending_count -= len(conn.pending.items)
        self._pending_bytes -= conn.pending.payload_bytes
        conn.pending.clear()

    # -- helpers --------------------------------------------------------------------------

    def _cap(self, raw: bytes) -> tuple[bytes, int]:
        size = len(raw)
        return (raw if size <= self.payload_max else raw[: self.payload_max]), min(
            size, INT4_MAX)

    def _emit(
        self, kind: str, handle: str, ts: float, conn: Conn | None, **fields: object
    ) -> None:
        self.counters["events"] += 1
        peer = conn.peer if conn is not None else ""
        self.emit(Event(kind, self.boot, handle, ts, peer, **fields))  # type: ignore[arg-type]
