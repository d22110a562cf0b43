"""A big HQ for the overview: 20 gearmand servers with the same 500 functions each (10,000
queues), written straight to Postgres as the poller and the rollups write them.

Most queues are idle (listed by gearmand, nothing queued or running, no job in 24 h). On
every up server 12 are busy (an hour of rollups, a depth history) and 3 were busy 3 h ago
only (quiet, not idle). A few need attention: jobs queued and no worker
(``NO_WORKERS``), the oldest queued job minutes old (``BACKED_UP``), a third of the last
hour failing (``FAILING``). Of the servers, one is down, one is no longer polled (its
tap is gone) and one was retired two days ago.
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from jobs.models import Boot, Job, Server
from monitoring import histogram
from monitoring.models import QueueSnapshot, Rollup, ServerState

FAMILIES = ["resize", "thumb", "mail", "sms", "push", "report", "export", "import", "index",
            "crawl", "ocr", "transcode", "invoice", "backup", "sync", "notify", "billing",
            "geocode", "pdf", "audit", "cleanup", "webhook", "scan", "train", "score"]
SERVERS = [f"gm-{i:02d}" for i in range(1, 21)]
DOWN, STALE, RETIRED = "gm-17", "gm-18", "gm-20"
NO_WORKERS = [("gm-03", "ocr_07", 1240), ("gm-11", "transcode_02", 35)]
BACKED_UP = [("gm-05", "mail_03", 480, 340), ("gm-09", "report_11", 62, 95),
             ("gm-14", "export_00", 9, 75)]  # server, function, queued, oldest age (s)
FAILING = [("gm-07", "billing_04")]
BUSY = [f"{fam}_{i:02d}" for fam in ("resize", "thumb", "mail", "push") for i in range(3)]
QUIET = ["index_00", "crawl_00", "pdf_00"]


def functions() -> list[str]:
    return [f"{fam}_{i:02d}" for fam in FAMILIES for i in range(20)]


def _hist(values: list[float]) -> list[int]:
    hist = histogram.from_values(values)
    while hist and not hist[-1]:
        hist.pop()
    return hist


def build_scale_world() -> dict[str, object]:
    now = timezone.now()
    names = functions()
    servers = {name: Server.objects.create(name=name, address=f"10.0.{i}.5:4730")
               for i, name in enumerate(SERVERS, start=1)}
    for name, server in servers.items():
        polled = {STALE: now - timedelta(minutes=12),
                  RETIRED: now - timedelta(days=3)}.get(name, now)
        ServerState.objects.create(
            server=server, up=name != DOWN, version="1.1.20", pid=str(4000 + server.id),
            started_at=now - timedelta(days=6), polled_at=polled,
            down_since=now - timedelta(minutes=5) if name == DOWN else None,
            failed_polls=3 if name == DOWN else 0,
            last_error="connection refused" if name == DOWN else "",
            retired_at=now - timedelta(days=2) if name == RETIRED else None)
    special = {(s, f): q for s, f, q in NO_WORKERS}
    special.update({(s, f): q for s, f, q, _age in BACKED_UP})
    stranded = {(s, f) for s, f, _q in NO_WORKERS}
    last_poll = {DOWN: now - timedelta(minutes=6), STALE: now - timedelta(minutes=12),
                 RETIRED: now - timedelta(days=3)}
    snaps, rolls = [], []
    start = now.replace(second=0, microsecond=0)
    for name, server in servers.items():
        at = last_poll.get(name, now)
        for fn in names:
            queued = special.get((name, fn), 0)
            busy = fn in BUSY
            workers = 0 if (name, fn) in stranded else 4 if busy or queued else 1
            running = 2 if busy else 0
            history = 10 if busy or queued else 1
            for k in range(history):
                depth = queued if not busy else 3 + (k * 7 + server.id) % 9
                snaps.append(QueueSnapshot(server=server, function=fn,
                                           at=at - timedelta(seconds=30 * (history - 1 - k)),
                                           total=depth + running, running=running,
                                           workers=workers))
        if name == RETIRED:
            continue
        first = 15 if name == STALE else 0  # its tap stopped 12 minutes ago
        for fn in BUSY + [f for s, f in FAILING if s == name]:
            failing = (name, fn) in FAILING
            for m in range(first, 60, 5):
                done = 40 + (m % 3) * 10
                failed = done // 3 if failing else 0
                rolls.append(Rollup(server=server, function=fn,
                                    minute=start - timedelta(minutes=m), submitted=done,
                                    completed=done - failed, failed=failed,
                                    runtime_hist=_hist([80.0 + i for i in range(done)]),
                                    wait_hist=_hist([5.0 + i for i in range(done)])))
        for fn in QUIET:
            rolls.append(Rollup(server=server, function=fn,
                                minute=start - timedelta(hours=3), submitted=5, completed=5,
                                failed=0, runtime_hist=_hist([50.0] * 5), wait_hist=[]))
    QueueSnapshot.objects.bulk_create(snaps, batch_size=5000)
    Rollup.objects.bulk_create(rolls, batch_size=5000)
    jobs = []
    for name, fn, _queued, age in BACKED_UP:
        server = servers[name]
        boot = Boot.objects.create(server=server, token="1", first_seen=now - timedelta(days=1))
        jobs.append(Job(server=server, boot=boot, handle=f"H:{name}:1", function=fn,
                        state="queued", background=True, updated_at=now,
                        submitted_at=now - timedelta(seconds=age)))
    Job.objects.bulk_create(jobs)
    return {"servers": servers, "functions": names, "now": now}
