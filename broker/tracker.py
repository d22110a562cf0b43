"""Correlation state machine: decoded packets per connection in, job lifecycle events out.

The tracker sees both directions of every connection to one gearmand and knows nothing of
sockets or databases. It pairs each SUBMIT_JOB* with the JOB_CREATED that answers it (per
connection, first in first out), follows the job to the worker connection that is assigned
it, and turns WORK_* packets into events. A job is named by (boot, handle): gearmand
restarts its handle counter at 1 when it restarts, so a counter that goes back starts a new
boot.

What it cannot know it does not invent: a job that was already queued or running when the
capture started shows up with the facts later packets carry (handle, function, worker,
result) and nothing else.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .protocol import AdminLine, Packet, PacketType
from .stream import ConnKey

T = PacketType

PRIORITY: dict[int, tuple[str, bool]] = {
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
ASSIGN_TYPES = frozenset({T.JOB_ASSIGN, T.JOB_ASSIGN_UNIQ, T.JOB_ASSIGN_ALL})
FINISH_KIND: dict[int, str] = {
    T.WORK_COMPLETE: "completed", T.WORK_FAIL: "failed", T.WORK_EXCEPTION: "exception",
}
PROGRESS_KIND: dict[int, str] = {T.WORK_DATA: "data", T.WORK_WARNING: "warning"}

#: how many finished handles to remember, so a result relayed to clients after the worker
#: sent it (and WORK_FAIL after WORK_EXCEPTION) is not counted twice.
FINISHED_MEMORY = 65536


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to one job. ``kind`` is one of the lifecycle event names."""

    kind: str
    boot: str
    handle: str
    ts: float
    conn: str = ""
    function: str | None = None
    unique: str | None = None
    priority: str | None = None
    background: bool | None = None
    epoch: int | None = None
    worker: str | None = None
    numerator: int | None = None
    denominator: int | None = None
    data: bytes | None = None
    size: int = 0
    detail: str = ""


@dataclass(slots=True)
class _Submit:
    function: str
    unique: str
    priority: str
    background: bool
    epoch: int | None
    payload: bytes
    size: int
    ts: float


@dataclass(slots=True)
class _Conn:
    key: ConnKey
    pending: deque[_Submit | None] = field(default_factory=deque)
    client_id: str = ""
    waiting: set[str] = field(default_factory=set)  # fg handles this client waits on
    holding: set[str] = field(default_factory=set)  # handles this worker was assigned
    admin: deque[bytes] = field(default_factory=deque)  # admin commands awaiting a reply
    gaps: int = 0  # bytes were lost on this connection: its submits no longer pair up

    @property
    def worker_name(self) -> str:
        return self.client_id or self.key.peer


@dataclass(slots=True)
class _Job:
    function: str | None
    background: bool | None
    unique: str | None = None
    started: bool = False
    submitted: bool = False  # False while HQ knows the job only from its assignment
    waiters: set[ConnKey] = field(default_factory=set)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _int(raw: bytes) -> int | None:
    try:
        return int(raw)
    except ValueError:
        return None


def handle_number(handle: str) -> int | None:
    """``H:host:1234`` → 1234; None when the handle has no numeric tail."""
    tail = handle.rpartition(":")[2]
    return int(tail) if tail.isdigit() else None


class Tracker:
    """Feed it with :meth:`packet`, :meth:`opened` and :meth:`closed`; events go to ``emit``."""

    def __init__(
        self, emit: Callable[[Event], None], *, boot: str = "0", payload_max: int = 65536
    ) -> None:
        self.emit = emit
        self.payload_max = payload_max
        self._pid = boot
        self._generation = 0
        self.boot = boot
        self._max_handle = 0
        self._conns: dict[ConnKey, _Conn] = {}
        self._jobs: dict[str, _Job] = {}
        # handle -> (function, unique) of jobs that ended, to tell a late duplicate of
        # their last packet from a new job that reuses the handle after a restart
        self._finished: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()
        self._counter_boot = False  # a new boot was inferred from the handle counter
        self.counters = {"packets": 0, "events": 0, "unmatched_created": 0, "boots": 0}

    # -- connection lifecycle -------------------------------------------------------------

    def opened(self, key: ConnKey) -> None:
        self._conns[key] = _Conn(key)

    def closed(self, key: ConnKey, ts: float) -> None:
        conn = self._conns.pop(key, None)
        if conn is None:
            return
        for handle in sorted(conn.holding):
            job = self._jobs.get(handle)
            if job is not None:
                job.started = False
                self._emit("worker_lost", handle, ts, conn, worker=conn.worker_name)
        for handle in sorted(conn.waiting):
            job = self._jobs.get(handle)
            if job is None:
                continue
            job.waiters.discard(key)
            if job.waiters:
                continue
            was = "running" if job.started else "queued"
            self._emit("abandoned", handle, ts, conn, detail=was)
            if not job.started and not job.background:
                # gearmand drops a foreground job nobody waits for before it has started.
                self._forget(handle)

    def gap(self, key: ConnKey) -> None:
        """Bytes of this connection were lost. Its pending submits cannot be paired with
        replies any more (one side of the pairing may be missing): forget them, so later
        JOB_CREATEDs go unmatched instead of being paired with the wrong submit."""
        conn = self._conns.get(key)
        if conn is not None:
            conn.pending.clear()
            conn.admin.clear()
            conn.gaps += 1

    def set_boot(self, pid: str, ts: float) -> None:
        """gearmand's pid changed: every job HQ was following died with the old process."""
        if pid == self._pid:
            return
        if self._counter_boot:
            # the restart was already seen in the handles: same boot, now with its pid
            self._pid = pid
            self._counter_boot = False
            return
        self._new_boot(ts, "gearmand restarted (pid changed)")
        self._pid = pid
        self._generation = 0
        self.boot = pid

    def active_handles(self) -> list[str]:
        return list(self._jobs)

    # -- packets --------------------------------------------------------------------------

    def packet(self, key: ConnKey, item: Packet | AdminLine, ts: float) -> None:
        conn = self._conns.get(key)
        if conn is None:
            conn = self._conns[key] = _Conn(key)
        self.counters["packets"] += 1
        if isinstance(item, AdminLine):
            self._admin(conn, item, ts)
        elif item.request:
            self._request(conn, item, ts)
        else:
            self._response(conn, item, ts)

    def _request(self, conn: _Conn, pkt: Packet, ts: float) -> None:
        ptype = pkt.type
        args = pkt.args
        if ptype in PRIORITY:
            conn.pending.append(self._submit(ptype, args, ts))
        elif ptype in FINISH_KIND:
            self._finish(conn, FINISH_KIND[ptype], args, ts)
        elif ptype == T.WORK_STATUS:
            self._emit(
                "status", _text(args[0]), ts, conn,
                numerator=_int(args[1]), denominator=_int(args[2]),
            )
        elif ptype in PROGRESS_KIND:
            data, size = self._cap(args[1])
            self._emit(PROGRESS_KIND[ptype], _text(args[0]), ts, conn, data=data, size=size)
        elif ptype == T.SET_CLIENT_ID:
            conn.client_id = _text(args[0])

    def _response(self, conn: _Conn, pkt: Packet, ts: float) -> None:
        ptype = pkt.type
        if ptype == T.JOB_CREATED:
            self._created(conn, _text(pkt.args[0]), ts)
        elif ptype in ASSIGN_TYPES:
            self._assigned(conn, pkt, ts)
        elif ptype == T.ERROR and conn.pending:
            conn.pending.popleft()  # the submit was refused (e.g. SUBMIT_JOB_SCHED)
        elif ptype in FINISH_KIND:
            handle = _text(pkt.args[0])
            if handle not in self._finished and handle in self._jobs:
                # gearmand itself ended the job (--job-retries exhausted).
                self._finish(conn, FINISH_KIND[ptype], pkt.args, ts, by_server=True)

    def _admin(self, conn: _Conn, line: AdminLine, ts: float) -> None:
        text = line.text
        if text.startswith(b"cancel job "):
            conn.admin.append(text[11:].strip())
        elif conn.admin and (text == b"OK" or text.startswith(b"ERR")):
            handle = _text(conn.admin.popleft())
            if text == b"OK" and handle in self._jobs:
                self._emit("cancelled", handle, ts, conn, detail="cancel job (admin)")
                self._forget(handle)

    # -- the steps of a job ---------------------------------------------------------------

    def _submit(self, ptype: int, args: tuple[bytes, ...], ts: float) -> _Submit:
        priority, background = PRIORITY[ptype]
        epoch = _int(args[2]) if ptype == T.SUBMIT_JOB_EPOCH else None
        data, size = self._cap(args[-1])
        return _Submit(
            _text(args[0]), _text(args[1]), priority, background, epoch, data or b"", size, ts
        )

    def _created(self, conn: _Conn, handle: str, ts: float) -> None:
        sub = conn.pending.popleft() if conn.pending else None
        if sub is None:
            self.counters["unmatched_created"] += 1
            return
        self._check_counter(handle, ts)
        if not conn.gaps and self._reused(handle, sub):
            self._restarted(ts, "gearmand restarted (a handle came back for another job)")
        job = self._jobs.get(handle)
        if not sub.background and job is not None:
            job.waiters.add(conn.key)
            conn.waiting.add(handle)
        if job is not None and job.submitted:
            self._emit("attached", handle, sub.ts, conn, background=sub.background)
            return
        submitted: dict[str, object] = {
            "function": sub.function, "unique": sub.unique, "priority": sub.priority,
            "background": sub.background, "epoch": sub.epoch, "data": sub.payload,
            "size": sub.size,
        }
        if job is None and handle in self._finished:
            # the job ran and ended before its JOB_CREATED was on the wire (a fast worker)
            self._emit("submitted", handle, sub.ts, conn, **submitted)
            return
        if job is None:
            # gearmand may hand the job to a worker before this JOB_CREATED is on the
            # wire; then the job is already known from its assignment.
            job = self._jobs[handle] = _Job(sub.function, sub.background, sub.unique)
        job.submitted = True
        job.background = sub.background
        if not sub.background:
            job.waiters.add(conn.key)
            conn.waiting.add(handle)
        self._emit("submitted", handle, sub.ts, conn, **submitted)

    def _assigned(self, conn: _Conn, pkt: Packet, ts: float) -> None:
        args = pkt.args
        handle, function = _text(args[0]), _text(args[1])
        unique = _text(args[2]) if pkt.type != T.JOB_ASSIGN else None
        job = self._jobs.get(handle)
        if job is None:
            # Queued before the capture began: record what the assignment tells us.
            job = self._jobs[handle] = _Job(function, None, unique)
            self._finished.pop(handle, None)
        job.started = True
        conn.holding.add(handle)
        data, size = self._cap(args[-1])
        self._emit(
            "started", handle, ts, conn, function=function, unique=unique,
            worker=conn.worker_name, data=data, size=size,
        )

    def _finish(
        self, conn: _Conn, kind: str, args: tuple[bytes, ...], ts: float, by_server: bool = False
    ) -> None:
        handle = _text(args[0])
        if handle in self._finished:
            return
        data, size = self._cap(args[1]) if len(args) > 1 else (None, 0)
        conn.holding.discard(handle)
        if by_server:
            # gearmand gave up after the worker died: that death may not be seen yet
            for holder in self._conns.values():
                if handle in holder.holding:
                    holder.holding.discard(handle)
                    self._emit("worker_lost", handle, ts, holder, worker=holder.worker_name)
        detail = ""
        if by_server and kind == "failed":
            detail = "gearmand gave up on the job (job retries exhausted)"
        self._emit(kind, handle, ts, conn, worker=None if by_server else conn.worker_name,
                   data=data, size=size, detail=detail)
        self._forget(handle)

    def _forget(self, handle: str) -> None:
        job = self._jobs.pop(handle, None)
        if job is not None:
            for key in job.waiters:
                waiter = self._conns.get(key)
                if waiter is not None:
                    waiter.waiting.discard(handle)
        finished = self._finished
        finished[handle] = (job.function, job.unique) if job is not None else (None, None)
        if len(finished) > FINISHED_MEMORY:
            finished.popitem(last=False)

    # -- helpers --------------------------------------------------------------------------

    def _check_counter(self, handle: str, ts: float) -> None:
        number = handle_number(handle)
        if number is None:
            return
        top = self._max_handle
        if (number <= 2 and top > 50) or top - number > 5000:
            self._restarted(ts, "gearmand restarted (handle counter went back)")
            top = 0
        self._max_handle = max(top, number)

    def _reused(self, handle: str, sub: _Submit) -> bool:
        """A handle HQ knows, returned for a job that cannot be the same one: gearmand
        coalesces only the same function with the same (non-empty) unique key, so another
        function or another unique means its handle counter started over."""
        known: tuple[str | None, str | None] | None = None
        job = self._jobs.get(handle)
        if job is not None:
            known = (job.function, job.unique)
        elif handle in self._finished:
            known = self._finished[handle]
        if known is None or known[0] is None:
            return False
        function, unique = known
        return function != sub.function or bool(unique and sub.unique and unique != sub.unique)

    def _restarted(self, ts: float, why: str) -> None:
        """gearmand restarted and its pid is not known yet: a numbered boot of the old
        pid, which the pid watcher later adopts (see set_boot) rather than restarting."""
        self._new_boot(ts, why)
        self._generation += 1
        self.boot = f"{self._pid}.{self._generation}"
        self._counter_boot = True

    def _new_boot(self, ts: float, why: str) -> None:
        for handle in list(self._jobs):
            self._emit("lost", handle, ts, None, detail=why)
            self._forget(handle)
        for conn in self._conns.values():
            conn.holding.clear()
            conn.waiting.clear()
        self._finished.clear()
        self._max_handle = 0
        self.counters["boots"] += 1

    def _cap(self, raw: bytes) -> tuple[bytes, int]:
        size = len(raw)
        return (raw if size <= self.payload_max else raw[: self.payload_max]), size

    def _emit(
        self, kind: str, handle: str, ts: float, conn: _Conn | None, **fields: object
    ) -> None:
        self.counters["events"] += 1
        peer = conn.key.peer if conn is not None else ""
        self.emit(Event(kind, self.boot, handle, ts, peer, **fields))  # type: ignore[arg-type]
