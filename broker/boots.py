"""The tracker's knowledge of gearmand's boots, and of the jobs each boot holds.

A job is named by (boot, handle). gearmand restarts its handle counter at 1 when it
restarts, so HQ starts a new boot when the pid watcher reports a new pid
(:meth:`BootTracking.set_boot`), or earlier, when the handle counter goes back or a handle
comes back for a job that cannot be the same one. Then every job of the old boot is
``lost``.

A JOB_CREATED names jobs in the order gearmand made them; an assignment does not (a job
queued long ago, or before HQ was watching, may be handed out any time), so an assignment
starts a boot only on evidence that its handle was already used for another job
(:meth:`BootTracking._check_assigned`).
"""

from __future__ import annotations

from collections import OrderedDict

from .jobstate import Conn, Job
from .limits import FINISHED_MEMORY, PID_MAX
from .stream import ConnKey
from .values import note


def handle_number(handle: str) -> int | None:
    """``H:host:1234`` → 1234; None when the handle has no (ASCII, sane) numeric tail."""
    tail = handle.rpartition(":")[2]
    if tail.isascii() and tail.isdigit() and len(tail) <= 18:
        return int(tail)
    return None


class BootTracking:
    """Boot inference and the job tables it resets; the tracker builds on it."""

    counters: dict[str, int]
    _conns: dict[ConnKey, Conn]

    def __init__(self, boot: str) -> None:
        self._pid = boot
        self._generation = 0
        self.boot = boot
        self._max_handle = 0
        self._min_handle: int | None = None  # the lowest handle created in this boot
        self._jobs: dict[str, Job] = {}
        # handle -> (function, unique) of jobs that ended, to tell a late duplicate of
        # their last packet from a new job that reuses the handle after a restart
        # (and when it ended, to tell an assignment delivered late from a new job)
        self._finished: OrderedDict[str, tuple[str | None, str | None, float]] = OrderedDict()
        self._counter_boot = False  # a new boot was inferred from the handle counter

    def _emit(self, kind: str, handle: str, ts: float, conn: Conn | None,
              **fields: object) -> None:
        raise NotImplementedError

    def _forget_job(self, handle: str) -> Job | None:
        raise NotImplementedError

    def set_boot(self, pid: str, ts: float) -> None:
        """gearmand's pid changed: every job HQ was following died with the old process."""
        pid = note(pid, PID_MAX)
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

    def _forget(self, handle: str, *, remember: bool = True, ts: float = 0.0) -> None:
        """The job ended (at ``ts``; or is let go): remember its handle as finished unless
        told not to."""
        job = self._forget_job(handle)
        if not remember:
            return
        finished = self._finished
        finished[handle] = ((job.function, job.unique, ts) if job is not None
                            else (None, None, ts))
        if len(finished) > FINISHED_MEMORY:
            finished.popitem(last=False)

    def _check_counter(self, handle: str, ts: float) -> None:
        number = handle_number(handle)
        if number is None:
            return
        top = self._max_handle
        if (number <= 2 and top > 50) or top - number > 5000:
            self._restarted(ts, "gearmand restarted (handle counter went back)")
            top = 0
        self._max_handle = max(top, number)
        if self._min_handle is None or number < self._min_handle:
            self._min_handle = number

    def _check_assigned(self, handle: str, function: str, unique: str | None,
                        ts: float) -> None:
        """gearmand assigns a job HQ does not follow: a new boot whose first job reached a
        worker before its JOB_CREATED was seen, or an old job (queued before HQ watched,
        or whose JOB_CREATED went unmatched). Only a handle known to have been used already
        says restart: one this boot finished with another function or unique key, or one
        at the counter's start (1, 2) below the handles seen since HQ saw this boot's first
        ones. (How far a handle lies below the counter says nothing here: a backlog is
        handed out long after it was created.)"""
        number = handle_number(handle)
        low = self._min_handle
        if (number is not None and low is not None and low <= number <= 2
                and self._max_handle > 50):
            self._restarted(ts, "gearmand restarted (handle counter went back)")
        elif handle in self._finished and self._reused(handle, function, unique):
            self._restarted(ts, "gearmand restarted (a handle came back for another job)")

    def _reused(self, handle: str, function: str, unique: str | None) -> bool:
        """A handle HQ knows, returned for a job that cannot be the same one: gearmand
        coalesces only the same function with the same (non-empty) unique key, so another
        function or another unique means its handle counter started over."""
        known: tuple[str | None, str | None] | None = None
        job = self._jobs.get(handle)
        if job is not None:
            known = (job.function, job.unique)
        elif handle in self._finished:
            known = self._finished[handle][:2]
        if known is None or known[0] is None:
            return False
        was_function, was_unique = known
        return was_function != function or bool(
            was_unique and unique and was_unique != unique)

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
        self._min_handle = None
        self.counters["boots"] += 1
