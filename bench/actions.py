"""Job actions at scale: the scheduler's lateness and bulk retry's rate (benchmark, not a test).

Everything runs against its own gearmand (a free port) and its own database on the shared
Postgres (default ``hq_bench_actions``: created and migrated when missing, HQ's job tables
emptied each run). The scheduler and bulk work are driven as in production (``make run``,
``scripts/run.sh``): one ``celery -A hq worker -B --concurrency=2`` (beat inside the
worker, ``jobs.tasks.submit_due_jobs`` every second), with a private Redis as its broker.
No tap runs (its cost is ``bench/cost.py``'s): HQ's submits stay HQ's rows, so each
tick's ``link_pending`` looks for tap rows it will not find (up to 200 a tick).

1. **baseline**: gearmand's own submit rate from one client: ``--baseline`` background
   submits, each waiting for JOB_CREATED, over one connection (``broker.client``).
2. **scheduled**: ``--scheduled`` one-off jobs due over ``--window`` seconds (evenly
   spread, starting 10 s after seeding), plus ``--schedules`` recurring schedules firing
   every minute (``* * * * *``); lateness = ``submitted_at - scheduled_for`` (a job) and
   ``ScheduleRun.at - tick`` (a schedule), p50/p95/max.
3. **burst**: ``--burst`` jobs all due at once: how fast the scheduler drains them.
4. **bulk retry**: ``--bulk`` failed jobs seeded directly in Postgres (as a tap records
   them, as ``tests/test_job_bulk.py`` does), retried by ``POST /api/v1/jobs/bulk/``'s
   service (``jobs.bulk.start``), carried out by the worker's ticks; jobs/s from the
   action's creation to its ``finished_at`` (or ``done`` over ``--bulk-timeout`` s when
   it has not finished then: "partial"). Checked: each job retried once, gearmand holds
   one job per retry.

``--root DIR`` runs the worker from another checkout of HQ (e.g. ``git archive <commit> |
tar -x -C DIR``) to measure a before/after pair in the same conditions.

    .venv/bin/python bench/actions.py [--scheduled 10000] [--window 60] [--burst 10000]
        [--bulk 100000] [--bulk-timeout 900] [--baseline 20000] [--root DIR]
        [--db hq_bench_actions] [--skip scheduled,burst,bulk]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    BenchError,
    ProcessSet,
    free_port,
    machine_info,
    percentile,
    prepare_database,
    process_set,
    raise_on_termination_signals,
    start_gearmand,
    start_redis,
)

SCHED_FN, BURST_FN, BULK_FN, BASE_FN = "bench_sched", "bench_burst", "bench_bulk", "bench_base"


def setup_django(db_url: str, gearman: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "hq.settings"
    os.environ["DATABASE_URL"] = db_url
    os.environ["HQ_GEARMAN"] = gearman
    os.environ.setdefault("HQ_SECRET_KEY", "bench")
    import django

    django.setup()


def empty_tables() -> None:
    from django.db import connection

    from hq.models import AuditEntry
    from jobs.models import Boot, BulkAction, Job, Schedule, ScheduleRun, Server

    tables = [m._meta.db_table for m in (ScheduleRun, Schedule, BulkAction, AuditEntry, Job,
                                         Boot, Server)]
    with connection.cursor() as cur:
        cur.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


# -- baseline ------------------------------------------------------------------------------------


def baseline(port: int, n: int) -> float:
    """gearmand's submit rate from one blocking client (jobs/s)."""
    from broker.client import ServerAddress, SubmitConnection

    with SubmitConnection(ServerAddress("bench", "127.0.0.1", port)) as conn:
        for i in range(200):  # warm up
            conn.submit(BASE_FN, b"w", unique=f"w{i}")
        began = time.perf_counter()
        for i in range(n):
            conn.submit(BASE_FN, b"payload", unique=f"b{i}")
        return n / (time.perf_counter() - began)


# -- the worker ----------------------------------------------------------------------------------


def start_worker(procs: ProcessSet, root: Path, env: dict[str, str]) -> Any:
    venv = ROOT / ".venv" / "bin" / "celery"
    argv = [str(venv), "-A", "hq", "worker", "-B", "--loglevel=INFO", "--concurrency=2",
            "--schedule", str(procs.workdir / "celerybeat-schedule")]
    proc = procs.spawn("celery", argv, env={**env, "PYTHONPATH": str(root)}, cwd=root)
    deadline = time.monotonic() + 60
    while "submit_due_jobs" not in proc.output() or "succeeded" not in proc.output():
        if not proc.alive() or time.monotonic() > deadline:
            raise BenchError(f"celery did not run a tick: {proc.output(3000)}")
        time.sleep(0.2)
    return proc


# -- scheduled jobs ------------------------------------------------------------------------------


def seed_scheduled(n: int, function: str, first: datetime, window_s: float) -> None:
    from django.utils import timezone

    from jobs.models import Job, Server, State

    server, _ = Server.objects.get_or_create(name="bench")
    now = timezone.now()
    Job.objects.bulk_create([
        Job(server=server, boot=None, handle="", function=function,
            unique=f"hq-{uuid.uuid4()}", priority="normal", background=True,
            state=State.SCHEDULED, updated_at=now, payload_text=f"p{i}", payload_size=len(
                f"p{i}"), scheduled_for=first + timedelta(seconds=window_s * i / max(n, 1)))
        for i in range(n)], batch_size=5000)


def seed_schedules(n: int, at: datetime) -> None:
    from jobs.models import Schedule

    Schedule.objects.bulk_create([
        Schedule(name=f"bench-{i}", function="bench_cron", payload_text="c", payload_size=1,
                 cron="* * * * *", timezone="UTC", enabled=True, overlap="allow",
                 next_run_at=at) for i in range(n)])


def wait_submitted(function: str, n: int, timeout: float) -> int:
    from jobs.models import Job

    deadline = time.monotonic() + timeout
    while True:
        left = Job.objects.filter(function=function, state="scheduled").count()
        if left == 0 or time.monotonic() > deadline:
            return n - left
        time.sleep(0.5)


def lateness(function: str) -> list[float]:
    from jobs.models import Job

    rows = Job.objects.filter(function=function, submitted_at__isnull=False).values_list(
        "submitted_at", "scheduled_for")
    return [(s - f).total_seconds() for s, f in rows if f is not None and s is not None]


def schedule_lateness() -> list[float]:
    from jobs.models import ScheduleRun

    return [(at - tick).total_seconds()
            for at, tick in ScheduleRun.objects.values_list("at", "tick")]


def run_scheduled(n: int, window_s: float, schedules: int) -> dict[str, Any]:
    from django.utils import timezone

    first = timezone.now() + timedelta(seconds=10)
    minute = (first + timedelta(seconds=window_s / 2)).replace(second=0, microsecond=0)
    minute = minute if minute >= first else minute + timedelta(minutes=1)
    seed_schedules(schedules, minute)
    seed_scheduled(n, SCHED_FN, first, window_s)
    seeded = time.monotonic()
    wait_until = (first - timezone.now()).total_seconds() + window_s
    done = wait_submitted(SCHED_FN, n, wait_until + 300)
    late = lateness(SCHED_FN)
    runs = schedule_lateness()
    return {"n": n, "submitted": done, "late": late, "runs": runs,
            "elapsed": time.monotonic() - seeded}


def run_burst(n: int) -> dict[str, Any]:
    from django.db.models import Max
    from django.utils import timezone

    from jobs.models import Job

    past = timezone.now() - timedelta(seconds=1)
    seed_scheduled(n, BURST_FN, past, 0)
    seeded = timezone.now()
    done = wait_submitted(BURST_FN, n, 1200)
    last = Job.objects.filter(function=BURST_FN).aggregate(m=Max("submitted_at"))["m"]
    span = (last - seeded).total_seconds() if last else float("nan")
    return {"n": n, "submitted": done, "rate": done / span if span > 0 else float("nan")}


# -- bulk retry ----------------------------------------------------------------------------------


def seed_failed(n: int) -> None:
    from django.utils import timezone

    from jobs.models import Boot, Job, Server

    server, _ = Server.objects.get_or_create(name="bench")
    boot, _ = Boot.objects.get_or_create(server=server, token="1",
                                         defaults={"first_seen": timezone.now()})
    at = timezone.now() - timedelta(minutes=30)
    for start in range(0, n, 10_000):
        Job.objects.bulk_create([
            Job(server=server, boot=boot, handle=f"H:b:{i}", function=BULK_FN,
                unique=f"u-{i}", priority="normal", background=True, state="failed",
                submitted_at=at, finished_at=at, updated_at=at, payload_text=f"p{i}",
                payload_size=len(f"p{i}"), error="boom")
            for i in range(start, min(start + 10_000, n))], batch_size=5000)


def run_bulk(n: int, timeout: float, port: int) -> dict[str, Any]:
    from broker.admin import AdminClient
    from jobs import bulk
    from jobs.models import BulkAction, Job

    seed_failed(n)
    action, count = bulk.start(action="retry", filter={"state": "failed",
                                                       "function": BULK_FN},
                               user=None, via="api")
    assert action is not None and count == n, count
    began = time.monotonic()
    while True:
        row = BulkAction.objects.get(pk=action.pk)
        if row.state == "done" or time.monotonic() - began > timeout:
            break
        time.sleep(0.5)
    partial = row.state != "done"
    if partial:
        rate = row.done / (time.monotonic() - began)
    else:
        assert row.finished_at is not None
        rate = (row.done + row.failed) / (row.finished_at - row.created_at).total_seconds()
    retries = Counter(Job.objects.filter(function=BULK_FN, retry_of__isnull=False)
                      .values_list("retry_of_id", flat=True))
    with AdminClient("127.0.0.1", port) as admin:
        held = sum(s.total for s in admin.status() if s.function == BULK_FN)
    return {"n": n, "done": row.done, "failed": row.failed, "rate": rate, "partial": partial,
            "retried_once": len(retries) == row.done and set(retries.values()) <= {1},
            "held": held}


# -- report --------------------------------------------------------------------------------------


def stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"p50 {percentile(values, 50):6.3f} s  p95 {percentile(values, 95):6.3f} s  "
            f"max {max(values):6.3f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", default="hq_bench_actions")
    p.add_argument("--root", type=Path, default=ROOT, help="the HQ checkout the worker runs")
    p.add_argument("--baseline", type=int, default=20_000)
    p.add_argument("--scheduled", type=int, default=10_000)
    p.add_argument("--window", type=float, default=60.0)
    p.add_argument("--schedules", type=int, default=20)
    p.add_argument("--burst", type=int, default=10_000)
    p.add_argument("--bulk", type=int, default=100_000)
    p.add_argument("--bulk-timeout", type=float, default=900.0)
    p.add_argument("--skip", default="", help="comma list of scheduled,burst,bulk")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    raise_on_termination_signals()
    db_url = f"postgres://postgres@127.0.0.1:5432/{args.db}"
    prepare_database(db_url, migrate=True)
    info = machine_info()
    print(f"# bench/actions.py  {info['date']}  {info['nproc']} cores  load {info['loadavg']}"
          f"  {info['gearmand']}")
    print(f"# worker code: {args.root}  database: {args.db}")
    with process_set() as procs:
        gm_port, redis_port = free_port(), free_port()
        start_gearmand(procs, "127.0.0.1", gm_port)
        start_redis(procs, redis_port)
        setup_django(db_url, f"bench=127.0.0.1:{gm_port}")
        empty_tables()
        base = baseline(gm_port, args.baseline)
        print(f"baseline: gearmand, one client, {args.baseline:,} submits: {base:,.0f} jobs/s",
              flush=True)
        env = {"DATABASE_URL": db_url, "HQ_GEARMAN": f"bench=127.0.0.1:{gm_port}",
               "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
               "HQ_SECRET_KEY": os.environ.get("HQ_SECRET_KEY", "bench")}
        worker = start_worker(procs, args.root, env)
        rows: list[tuple[str, str, str]] = []
        if "scheduled" not in skip:
            r = run_scheduled(args.scheduled, args.window, args.schedules)
            rows.append((f"scheduled: {r['n']:,} one-off due over {args.window:g} s "
                         f"(submitted {r['submitted']:,})", stats(r["late"]), ""))
            rows.append((f"recurring: {args.schedules} schedules '* * * * *' "
                         f"({len(r['runs'])} runs)", stats(r["runs"]), ""))
            for what, result, _ in rows[-2:]:
                print(f"{what}: {result}", flush=True)
        if "burst" not in skip:
            r = run_burst(args.burst)
            rows.append((f"burst: {r['n']:,} due at once (submitted {r['submitted']:,})",
                         f"{r['rate']:,.0f} jobs/s", f"{r['rate'] / base:.3f}x"))
            print(*rows[-1], sep="  ", flush=True)
        if "bulk" not in skip:
            r = run_bulk(args.bulk, args.bulk_timeout, gm_port)
            what = (f"bulk retry: {r['n']:,} failed jobs (done {r['done']:,}, failed "
                    f"{r['failed']:,}{', PARTIAL' if r['partial'] else ''}; each once: "
                    f"{r['retried_once']}; gearmand holds {r['held']:,})")
            rows.append((what, f"{r['rate']:,.0f} jobs/s", f"{r['rate'] / base:.3f}x"))
            print(*rows[-1], sep="  ", flush=True)
        if not worker.alive():
            print(f"! the worker exited: {worker.output(2000)}")
    print()
    print(f"{'what':<100} {'result':<44} vs gearmand 1 client ({base:,.0f}/s)")
    for what, result, ratio in rows:
        print(f"{what:<100} {result:<44} {ratio}")
    print(f"# finished {datetime.now(UTC).isoformat(timespec='seconds')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
