"""Search and chart latency at millions of rows (benchmark, not a test).

Seeds a separate database with N jobs (default 10 million) spread over 7 days, 200
functions, payloads with order numbers, plus 24 h of minute rollups and 30 queue polls for
every function; then times the queries the UI and API run, through the real selectors:

- find by handle (the search box / ``?handle=``), first page
- a filtered list (function + state), first page
- ``q`` payload text search (trigram index), first page; ``q`` with a whole handle, a
  unique key, and text no job has (each first page)
- the 24 h queue chart (``queue_stats`` from rollups)
- ``/api/v1/queues/`` with 200 functions (``queues()``)

Baseline in the same run: a primary-key lookup of one job, the cheapest query there is.

    .venv/bin/python bench/search.py [--jobs 10000000] [--repeat 200]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hq.settings")
FUNCTIONS = 200

SEED_JOBS = """
INSERT INTO jobs_job (server_id, boot_id, handle, function, "unique", priority, background,
    state, submitted_at, started_at, finished_at, wait_ms, runtime_ms, attempts, worker,
    payload_text, payload_size, result_text, result_size, error, clients, updated_at)
SELECT %(server)s, %(boot)s, 'H:bench:' || i, 'fn_' || (i %% {functions}), 'u-' || i,
    'normal', true,
    CASE WHEN i %% 47 = 0 THEN 'failed' ELSE 'completed' END,
    t, t + interval '20 ms', t + interval '20 ms' + (i %% 997) * interval '1 ms',
    20, i %% 997, 1, 'worker-' || (i %% 40),
    '{{"order": ' || (1000000 + i) || ', "sku": "SKU-' || (i %% 5000) || '"}}', 40,
    'ok', 2, CASE WHEN i %% 47 = 0 THEN 'timeout talking to upstream' ELSE '' END, 1, t
FROM (SELECT i, now() - interval '7 days' * (%(total)s - i) / %(total)s AS t
      FROM generate_series(%(start)s, %(stop)s) AS i) s
"""
SEED_ROLLUPS = """
INSERT INTO monitoring_rollup (server_id, function, minute, submitted, completed, failed,
    runtime_hist, wait_hist)
SELECT %(server)s, 'fn_' || f, date_trunc('minute', now()) - m * interval '1 minute',
    60, 58, 2, '[0, 0, 0, 1, 2, 4, 8, 10, 12, 10, 6, 3, 1, 1]'::jsonb,
    '[0, 3, 9, 20, 18, 6, 2]'::jsonb
FROM generate_series(0, {functions} - 1) f, generate_series(0, 1439) m
ON CONFLICT DO NOTHING
"""
SEED_SNAPSHOTS = """
INSERT INTO monitoring_queuesnapshot (server_id, function, at, total, running, workers)
SELECT %(server)s, 'fn_' || f, now() - p * interval '5 seconds', (f * 7 + p) %% 90, 2, 3
FROM generate_series(0, {functions} - 1) f, generate_series(0, 29) p
"""


def setup(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def seed(total: int) -> tuple[int, float]:
    from django.db import connection
    from django.utils import timezone

    from jobs.models import Boot, Server

    server, _ = Server.objects.get_or_create(name="bench10m")
    boot, _ = Boot.objects.get_or_create(server=server, token="1",
                                         defaults={"first_seen": timezone.now()})
    have = server.jobs.count()
    if have >= total:
        return server.id, 0.0
    started = time.perf_counter()
    chunk = 500_000
    with connection.cursor() as cur:
        for start in range(have + 1, total + 1, chunk):
            stop = min(start + chunk - 1, total)
            cur.execute(SEED_JOBS.format(functions=FUNCTIONS),
                        {"server": server.id, "boot": boot.id, "total": total,
                         "start": start, "stop": stop})
            print(f"  seeded {stop:,} / {total:,} jobs "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
        cur.execute("DELETE FROM monitoring_rollup WHERE server_id = %s", [server.id])
        cur.execute(SEED_ROLLUPS.format(functions=FUNCTIONS), {"server": server.id})
        cur.execute("DELETE FROM monitoring_queuesnapshot WHERE server_id = %s", [server.id])
        cur.execute(SEED_SNAPSHOTS.format(functions=FUNCTIONS), {"server": server.id})
        cur.execute("ANALYZE jobs_job")
        cur.execute("ANALYZE monitoring_rollup")
        cur.execute("ANALYZE monitoring_queuesnapshot")
    return server.id, time.perf_counter() - started


def timed(fn: Callable[[int], object], repeat: int) -> list[float]:
    out = []
    for i in range(repeat):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--database", default="gearman_hq_bench10m")
    args = parser.parse_args()
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", args.database],
                   capture_output=True)
    setup(f"postgres://postgres@127.0.0.1:5432/{args.database}")
    print(f"search bench: {args.jobs:,} jobs, {FUNCTIONS} functions, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
    server_id, took = seed(args.jobs)
    if took:
        print(f"seeding took {took:.0f} s")

    from jobs.models import Job
    from jobs.selectors import search_jobs
    from monitoring import selectors

    rng = random.Random(1)
    total = args.jobs
    ids = list(Job.objects.filter(server_id=server_id).order_by("-id")
               .values_list("id", flat=True)[:1000])
    cases: list[tuple[str, Callable[[int], object], float]] = [
        ("primary-key lookup (baseline)",
         lambda i: Job.objects.get(pk=ids[i % len(ids)]), 0),
        ("find by handle", lambda i: list(search_jobs(
            {"handle": f"H:bench:{rng.randint(1, total)}"})[:50]), 10),
        ("filtered list: function + state=failed", lambda i: list(search_jobs(
            {"function": f"fn_{rng.randrange(FUNCTIONS)}", "state": "failed"})[:50]), 100),
        ("q: payload text (order number)", lambda i: list(search_jobs(
            {"q": f"{1000000 + rng.randint(1, total)}"})[:50]), 100),
        ("q: a whole handle", lambda i: list(search_jobs(
            {"q": f"H:bench:{rng.randint(1, total)}"})[:50]), 100),
        ("q: a unique key", lambda i: list(search_jobs(
            {"q": f"u-{rng.randint(1, total)}"})[:50]), 100),
        ("q: text nothing has", lambda i: list(search_jobs(
            {"q": f"nothing-{rng.randint(1, total)}"})[:50]), 100),
        ("24 h queue chart from rollups", lambda i: selectors.queue_stats(
            f"fn_{rng.randrange(FUNCTIONS)}", 86400, 900), 50),
        ("/api/v1/queues/ rows, 200 functions", lambda i: selectors.queues(), 100),
    ]
    print()
    print(f"{'query':<42} {'p50 ms':>8} {'p95 ms':>8} {'x base':>8} {'target':>8}")
    base_p50 = None
    for name, fn, target in cases:
        fn(0)  # warm the plan cache and the pages it touches
        samples = sorted(timed(fn, args.repeat))
        p50 = statistics.median(samples)
        p95 = samples[int(len(samples) * 0.95) - 1]
        base_p50 = base_p50 or p50
        goal = f"< {target:g}" if target else "-"
        print(f"{name:<42} {p50:>8.2f} {p95:>8.2f} {p50 / base_p50:>8.1f} {goal:>8}")


if __name__ == "__main__":
    main()
