"""The tap's worker rows: traffic facts written within a second, the admin poll reconciling.

The tracker's :class:`~broker.workers.WorkerWatch` hands each worker change to
:meth:`WorkerSync.fact` (on the tracker's thread: it only keeps the latest fact per peer and
wakes this thread). One thread writes them, a batch at a time, with
:func:`monitoring.services.apply_worker_facts`, then tells the live stream which functions'
workers changed. The poller hands gearmand's ``workers`` list to :meth:`WorkerSync.poll`;
the same thread reconciles the rows with it once traffic captured before the list was
taken has had time to arrive (:data:`SETTLE_S`), leaving alone the workers the traffic
changed since shortly before (their list line may be older than what the traffic said).
One writer for the Worker rows, so the poll and the traffic never race each other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import UTC, datetime

from broker.admin import WorkerLine
from broker.workers import WorkerFact
from monitoring import live

log = logging.getLogger("hq.tap")

#: facts arriving this soon after the first of a burst go in the same write (a worker
#: sends one CAN_DO per function, back to back)
BATCH_S = 0.02
#: how long after gearmand's list was taken the traffic of that moment may still be on its
#: way (capture buffering, the proxy's pipe); also how far back a traffic change keeps a
#: worker out of that list's reconciliation
SETTLE_S = 2.0
#: how long a change is remembered for that purpose
RECENT_S = 60.0
RETRY_S = 1.0


class WorkerSync:
    def __init__(self, server: str, address: str, stop: threading.Event) -> None:
        self.server = server
        self.address = address
        self._stop = stop
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._facts: dict[str, WorkerFact] = {}
        self._held: tuple[list[WorkerLine], float] | None = None
        #: (when written, signature) of every row the traffic changed lately
        self._recent: deque[tuple[float, tuple[str, frozenset[str]]]] = deque(maxlen=100_000)
        self.counters = {"worker_facts": 0, "worker_writes": 0, "worker_errors": 0,
                         "worker_reconciles": 0}

    def fact(self, fact: WorkerFact) -> None:
        """From the tracker's thread: keep the latest per peer, wake the writer."""
        with self._lock:
            self._facts[fact.peer] = fact
        self.counters["worker_facts"] += 1
        self._wake.set()

    def poll(self, lines: list[WorkerLine], listed_at: float) -> None:
        """gearmand's ``workers`` list, taken at ``listed_at``; kept until reconciled (a
        newer list meanwhile is dropped: the next poll brings another)."""
        with self._lock:
            if self._held is None:
                self._held = (lines, listed_at)
        self._wake.set()

    def run(self) -> None:
        while not self._stop.is_set():
            held = self._held
            wait = max(0.05, held[1] + SETTLE_S - time.time()) if held else 5.0
            if self._wake.wait(wait):
                self._wake.clear()
                self._stop.wait(BATCH_S)
            try:
                self.step()
            except Exception as exc:  # Postgres away: the facts are kept for the next try
                self.counters["worker_errors"] += 1
                count = self.counters["worker_errors"]
                if count <= 3 or count % 60 == 0:  # an outage retries every second
                    log.warning("worker rows not written (#%d, %s: %s)", count,
                                exc.__class__.__name__, str(exc).strip()[:200])
                from django.db import close_old_connections

                close_old_connections()
                self._stop.wait(RETRY_S)

    def step(self) -> None:
        """Write the pending facts, then reconcile with a settled list if one is held."""
        from monitoring.services import apply_worker_facts, reconcile_polled_workers

        with self._lock:
            facts, self._facts = self._facts, {}
        functions: set[str] = set()
        if facts:
            try:
                changes = apply_worker_facts(name=self.server, address=self.address,
                                             facts=list(facts.values()))
            except Exception:
                with self._lock:  # put back what no newer fact replaced
                    self._facts = {**facts, **self._facts}
                raise
            self.counters["worker_writes"] += 1
            now = time.time()
            self._recent.extend((now, sig) for sig in changes.signatures)
            functions = changes.functions
        held = self._held
        if held is not None and time.time() > held[1] + RECENT_S / 2:
            with self._lock:  # written after a long outage: too old to judge by
                self._held = held = None
        if held is not None and time.time() >= held[1] + SETTLE_S:
            lines, listed_at = held
            since = listed_at - SETTLE_S
            while self._recent and self._recent[0][0] < time.time() - RECENT_S:
                self._recent.popleft()
            unsettled = {sig for t, sig in self._recent if t >= since}
            reconcile_polled_workers(name=self.server, address=self.address, lines=lines,
                                     at=datetime.fromtimestamp(listed_at, UTC),
                                     unsettled=unsettled)
            self.counters["worker_reconciles"] += 1
            with self._lock:
                self._held = None
        if functions:
            live.workers_changed(self.server, sorted(functions))
