"""Running a tap: byte source → TapSink (parser + tracker) → EventWriter → Postgres.

Shared by ``manage.py gearman_capture`` and ``manage.py gearman_proxy``. Besides wiring the
parts, it watches gearmand's pid (admin ``getpid``) so a restart starts a new boot, reports
the counters and the tap's health to Redis every few seconds (to the log every
``HQ_TAP_STATS_INTERVAL`` seconds) and flushes everything on stop.

Postgres being down never stops a tap from starting: events go to the writer's disk spool,
the monitoring writes of each poll are skipped, and the start-up work that needs the
database (closing the jobs of earlier gearmand runs) retries with backoff in the
background. Its threads are watched (``hq/tap/threads.py``): should one die, the command
stops and exits non-zero.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, ParamSpec

from django.conf import settings

from broker import compiled, gcpolicy
from broker.admin import AdminClient, AdminError, FunctionStatus, WorkerLine
from broker.tap import TapSink, make_tap
from jobs.ingest import EventWriter, conninfo_from_settings
from monitoring import live, taps

from . import memory
from .threads import ThreadWatch
from .workers import WorkerSync

log = logging.getLogger("hq.tap")
P = ParamSpec("P")
STATS_TO_REDIS_S = 5.0
#: how long after the list was taken the tap waits for packets still on their way
#: (capture buffers, reassembly holding a segment behind a hole) before judging by it
RECONCILE_SETTLE_S = 3.0
#: start-up retries: first delay and longest delay, seconds
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0


def read_pid(host: str, port: int, wait_s: float = 5.0) -> str | None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with AdminClient(host, port, timeout=2) as admin:
                return admin.getpid()
        except AdminError as exc:
            if time.monotonic() >= deadline:
                log.warning("getpid failed (%s); jobs go under boot '0' until it answers", exc)
                return None
            time.sleep(0.25)


class TapRunner:
    def __init__(self, server: str, gearman: tuple[str, int], *, stats_interval: float = 30.0,
                 poll_interval: float | None = None) -> None:
        self.server = server
        self.gearman = gearman
        self.writer = EventWriter(
            server, conninfo_from_settings(), spool_dir=settings.HQ_SPOOL_DIR,
            batch=settings.HQ_INGEST_BATCH, flush_ms=settings.HQ_INGEST_FLUSH_MS,
            address=f"{gearman[0]}:{gearman[1]}", on_commit=self._jobs_changed,
            spool_max=settings.HQ_SPOOL_MAX, quarantine_max=settings.HQ_QUARANTINE_MAX,
        )
        self.pid = read_pid(*gearman) or "0"
        self.sink: TapSink = make_tap(self.writer.emit, boot=self.pid,
                                      payload_max=settings.HQ_PAYLOAD_MAX)
        self.source_stats: Callable[[], dict[str, int]] = lambda: {}
        #: more sections for the stats (the proxy's child adds how it was started)
        self.extra_stats: dict[str, dict[str, Any]] = {}
        self.watch = ThreadWatch()
        self.counters = {"poll_errors": 0, "startup_retries": 0, "admin_lines_skipped": 0,
                         "reconciled_lost": 0, "unrecorded_lost": 0, "reconcile_errors": 0}
        self._stop = threading.Event()
        self._stopping = False
        #: worker rows from the traffic, reconciled with each poll's list
        self.workers = WorkerSync(server, f"{gearman[0]}:{gearman[1]}", self._stop)
        self.sink.tracker.workers.emit = self.workers.fact
        self._started_at = time.time()
        self._stats_interval = stats_interval
        self._poll_interval = poll_interval or settings.HQ_POLL_INTERVAL
        self._last_queues: set[tuple[str, int, int, int]] = set()
        self._last_workers: set[tuple[int, str, tuple[str, ...]]] = set()
        #: gearmand's list of held jobs waiting to be compared: (taken at, handles, boot)
        self._held: tuple[float, set[str], str] | None = None
        self._next_reconcile = 0.0
        #: per boot, the highest job number searched for missed jobs
        self._gap_marks: dict[str, int] = {}
        self._gaps_open = False  # placeholders emitted and not yet seen written

    def start(self) -> None:
        gcpolicy.for_hot_loop()
        memory.limit_arenas()
        self.watch.install()
        self.writer.start()
        self.watch.watch(self.writer.thread)
        self.watch.spawn(self._watch_boot, "hq-boot-watch")
        self.watch.spawn(self._log_stats, "hq-tap-stats")
        self.watch.spawn(self.workers.run, "hq-workers")
        threading.Thread(target=self._startup, name="hq-tap-startup", daemon=True).start()
        log.info("tap for server %r watching gearmand %s:%d (pid %s); hot path %s",
                 self.server, *self.gearman, self.pid, compiled.status())

    def _startup(self) -> None:
        """The start-up work that needs Postgres (and gearmand's pid), retried with backoff
        until it succeeds or the tap stops."""
        from django.db import connection

        delay = RETRY_FIRST_S
        while not self._stop.is_set():
            if self.pid != "0":  # the poller learns it when gearmand answers later
                try:
                    self._close_previous_boots()
                    return
                except Exception as exc:
                    self.counters["startup_retries"] += 1
                    log.warning("start-up query failed (%s: %s); retrying in %.1f s",
                                exc.__class__.__name__, str(exc).strip()[:200], delay)
                finally:
                    connection.close()
            self._stop.wait(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def _close_previous_boots(self) -> None:
        """Jobs still queued or running under an older boot of this server died with that
        gearmand while no tap was watching: record them lost (through the usual events,
        so each gets its timeline entry)."""
        from broker.tracker import Event
        from jobs.models import Job

        pid = self.pid
        stale = (Job.objects.filter(server__name=self.server,
                                    state__in=["queued", "running", "scheduled"])
                 .exclude(boot__token=pid).exclude(boot__token__startswith=f"{pid}.")
                 .values_list("boot__token", "handle"))
        now = time.time()
        found = list(stale)  # all read before any is emitted: a retry emits nothing twice
        for token, handle in found:
            self.writer.emit(Event("lost", token, handle, now,
                                   detail="gearmand restarted while HQ was not watching"))
        if found:
            log.warning("%d jobs of earlier gearmand runs were still open: recorded lost",
                        len(found))

    def quiesce(self) -> None:
        """Stop polling gearmand (our own admin traffic would keep a draining capture
        busy); ingest goes on until :meth:`stop`."""
        self.watch.stopping()  # the poller and the reporter end now, on purpose
        self._stop.set()

    def stop(self) -> None:
        self._stopping = True
        self.watch.stopping()
        self._stop.set()
        self.writer.stop()
        stats = self.stats()
        taps.tap_stats_to_redis(self.server, stats)
        live.drain(2)
        log.info("tap stopped: %s", json.dumps(stats, sort_keys=True, default=str))

    def _jobs_changed(self, rows: list[tuple[int, str, str, str]]) -> None:
        """After each committed batch: tell the live stream (coalesced there)."""
        live.jobs_changed({"id": i, "handle": h, "function": f, "state": st,
                           "server": self.server} for i, h, f, st in rows)

    def stats(self) -> dict[str, Any]:
        return {
            "source": self.source_stats(),
            "tap": dict(self.sink.counters),
            "tracker": {**self.sink.tracker.counters, **self.sink.tracker.sizes()},
            "writer": self.writer.stats(),
            "process": {"pid": os.getpid(), "started_at": self._started_at,
                        "stopping": self._stopping, "dead_thread": self.watch.dead,
                        **self.counters, **self.workers.counters},
            **self.extra_stats,
        }

    def _watch_boot(self) -> None:
        """Poll gearmand's admin protocol: its pid (a change is a new boot) and, for the
        monitoring pages, its status and workers lists. One failed poll is logged, never
        the end of the thread."""
        while not self._stop.wait(self._poll_interval):
            try:
                self.poll_once()
            except Exception:
                self.counters["poll_errors"] += 1
                log.exception("admin poll failed")

    def poll_once(self) -> None:
        from monitoring.services import record_poll, record_poll_failure

        address = f"{self.gearman[0]}:{self.gearman[1]}"
        held: set[str] | None = None
        try:
            with AdminClient(*self.gearman, timeout=2) as admin:
                pid = admin.getpid()
                version = admin.version()
                statuses = admin.status()
                workers = admin.workers()
                listed_at = time.time()
                if self._held is None and listed_at >= self._next_reconcile:
                    held = admin.show_jobs()
                self.counters["admin_lines_skipped"] += admin.skipped
        except AdminError as exc:
            self._safely(record_poll_failure, name=self.server, address=address, error=str(exc))
            return  # gearmand down: the next answer tells whether it restarted
        if pid != self.pid:
            log.warning("gearmand pid changed %s -> %s: new boot", self.pid, pid)
            self.pid = pid
            self.sink.request_boot(pid)
        elif held is not None and self.pid != "0":
            self._held = (listed_at, held, self.sink.tracker.boot)
        self._reconcile()
        self._safely(record_poll, name=self.server, address=address, pid=pid, version=version,
                     statuses=statuses, workers=None)
        self.workers.poll(workers, listed_at)
        self._publish_poll(statuses, workers)

    def _reconcile(self) -> None:
        """Record ``lost`` the open jobs gearmand's last list shows to have ended unseen,
        once everything captured before the list was taken has been written."""
        if self._held is None:
            return
        try:
            self._reconcile_held()
        finally:
            if self._held is None:  # the list is done with: give its pages back
                memory.trim()

    def _reconcile_held(self) -> None:
        from jobs.reconcile import NOT_RECORDED, caught_up, unheld_jobs, unrecorded

        assert self._held is not None
        listed_at, held, boot = self._held
        if time.time() < listed_at + RECONCILE_SETTLE_S:
            return
        if boot != self.sink.tracker.boot:  # a restart since: that list says nothing now
            self._held = None
            return
        if not caught_up(self.writer.pending_since(), listed_at):
            return  # the writer is behind (an outage): the list keeps until it catches up
        self._held = None
        self._next_reconcile = time.time() + settings.HQ_RECONCILE_INTERVAL
        from django.db import DatabaseError, close_old_connections

        from broker.tracker import Event

        try:
            found = unheld_jobs(self.server, held=held, listed_at=listed_at, boot=boot)
        except DatabaseError as exc:
            self.counters["reconcile_errors"] += 1
            log.warning("open jobs not checked against gearmand: %s", exc)
            close_old_connections()
            return
        now = time.time()
        for job in found:
            self.writer.emit(Event("lost", job.boot, job.handle, now, detail=job.reason))
        if found:
            self.counters["reconciled_lost"] += len(found)
            log.warning("%d open jobs are no longer held by gearmand and were never seen "
                        "to end: recorded lost", len(found))
        try:
            gaps = unrecorded(self.server, boot=boot, held=held, listed_at=listed_at,
                              after=self._gap_marks.get(boot))
        except DatabaseError as exc:
            self.counters["reconcile_errors"] += 1
            log.warning("missed jobs not looked for: %s", exc)
            close_old_connections()
            return
        if gaps.mark is not None and not gaps.handles:
            # only once a pass finds nothing missing below it: the lost events of the
            # gaps found now can themselves be dropped (a full spool), and are then found
            # again by the next pass, which by then sees the written ones as rows
            if self._gaps_open:
                log.info("reconciled: no job missing up to number %s", gaps.mark)
            self._gaps_open = False
            self._gap_marks[boot] = gaps.mark
        # no more than the writer keeps in memory: the rest at the next pass, rather than
        # spilling placeholders to the spool (whose oldest batches may be dropped)
        room = max(0, self.writer.queue_max - self.writer.queued)
        handles = gaps.handles[:room]
        for handle in handles:
            self.writer.emit(Event("lost", boot, handle, now, detail=NOT_RECORDED))
        if handles:
            self._gaps_open = True
            self.counters["unrecorded_lost"] += len(handles)
            log.warning("%d jobs gearmand created were not recorded (%s … %s): recorded lost"
                        "%s", len(handles), handles[0], handles[-1],
                        f" ({len(gaps.handles) - len(handles)} more at the next pass)"
                        if len(handles) < len(gaps.handles) else "")

    def _publish_poll(self, statuses: list[FunctionStatus], workers: list[WorkerLine]) -> None:
        """Tell live pages when gearmand's counts or worker list moved since last poll."""
        queues = {(s.function, s.total, s.running, s.workers) for s in statuses}
        crew = {(w.fd, w.client_id, w.functions) for w in workers}
        if queues != self._last_queues:
            live.queues_changed(self.server)
        if crew != self._last_workers:
            live.workers_changed(self.server)
        self._last_queues, self._last_workers = queues, crew

    @staticmethod
    def _safely(fn: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> None:
        """Monitoring writes must not kill the poller when Postgres is away."""
        from django.db import DatabaseError, close_old_connections

        try:
            fn(*args, **kwargs)
        except DatabaseError as exc:
            log.warning("could not record the poll: %s", exc)
            close_old_connections()

    def _log_stats(self) -> None:
        """Stats to Redis every few seconds (for /metrics and the health checks), to the
        log less often."""
        last_log = time.monotonic()
        while not self._stop.wait(STATS_TO_REDIS_S):
            try:
                stats = self.stats()
                taps.tap_stats_to_redis(self.server, stats)
                if time.monotonic() - last_log >= self._stats_interval:
                    last_log = time.monotonic()
                    log.info("tap stats: %s", json.dumps(stats, sort_keys=True, default=str))
            except Exception:
                log.exception("tap stats not reported")
