"""How fast the recovery sweep decides (benchmark, not a test).

Seeds ``--jobs`` failed background jobs straight into Postgres (as a tap records them:
a boot, a handle, ``recovery = ''``), half of them of a function a retry policy covers
(``max_attempts`` 3, retried: each decision schedules a retry through the rate cap) and
half of one no policy covers (left alone: the cheapest decision), then runs
``jobs.recovery.engine.sweep`` until none is left and prints decisions per second. Its own
database on the shared Postgres (default ``test_hq_helper_a_sweep``: created and migrated
when missing, HQ's job tables emptied each run).

    .venv/bin/python bench/recovery_sweep.py [--jobs 4000] [--cap 100000] [--reps 3]
        [--db test_hq_helper_a_sweep]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import prepare_database  # noqa: E402


def setup_django(db_url: str, cap: int) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "hq.settings"
    os.environ["DATABASE_URL"] = db_url
    os.environ["HQ_RETRY_MAX_PER_S"] = str(cap)
    os.environ.setdefault("HQ_SECRET_KEY", "bench")
    import django

    django.setup()


def seed(count: int) -> None:
    from django.db import connection
    from django.utils import timezone

    from jobs.models import Boot, Job, RetryPolicy, Server

    with connection.cursor() as cur:
        cur.execute("TRUNCATE jobs_job, jobs_jobevent, jobs_retrypolicy, hq_auditentry "
                    "RESTART IDENTITY CASCADE")
    RetryPolicy.objects.create(function="bench_retry", max_attempts=3, backoff_base_s=60,
                               backoff_max_s=600, retry_on=["failed"], order=1)
    server, _ = Server.objects.get_or_create(name="bench")
    boot, _ = Boot.objects.get_or_create(server=server, token="1",
                                         defaults={"first_seen": timezone.now()})
    past = timezone.now() - timedelta(minutes=5)
    Job.objects.bulk_create(
        [Job(server=server, boot=boot, handle=f"H:bench:{i}",
             function="bench_retry" if i % 2 else "bench_plain", unique=f"u{i}",
             background=True, state="failed", submitted_at=past, finished_at=past,
             payload_text=f"payload {i}", payload_size=len(f"payload {i}"),
             error="the worker reported failure (WORK_FAIL)", updated_at=past)
         for i in range(count)], batch_size=2000)
    with connection.cursor() as cur:
        cur.execute("ANALYZE jobs_job")


def run(count: int) -> tuple[float, int, int]:
    from jobs.models import Job
    from jobs.recovery import engine

    seed(count)
    decided = retried = 0
    started = time.perf_counter()
    while True:
        out = engine.sweep(max_jobs=100_000, max_s=600)
        n = out.retried + out.dead + out.left
        decided += n
        retried += out.retried
        if n == 0:
            break
    elapsed = time.perf_counter() - started
    left = Job.objects.filter(state="failed", recovery="", boot__isnull=False).count()
    assert left == 0, f"{left} jobs left undecided"
    return elapsed, decided, retried


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--cap", type=int, default=100_000,
                        help="HQ_RETRY_MAX_PER_S (high: measure the sweep, not the cap)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--db", default="test_hq_helper_a_sweep")
    args = parser.parse_args()
    db_url = f"postgres://postgres@127.0.0.1:5432/{args.db}"
    prepare_database(db_url, migrate=True)
    setup_django(db_url, args.cap)
    print(f"{'rep':>3} {'jobs':>6} {'retried':>7} {'seconds':>8} {'decisions/s':>11}")
    rates = []
    for rep in range(1, args.reps + 1):
        elapsed, decided, retried = run(args.jobs)
        rates.append(decided / elapsed)
        print(f"{rep:>3} {decided:>6} {retried:>7} {elapsed:>8.2f} {decided / elapsed:>11.0f}")
    rates.sort()
    print(f"median {rates[len(rates) // 2]:.0f} decisions/s")


if __name__ == "__main__":
    main()
