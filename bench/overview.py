"""What the overview costs the server with 20 gearmand × 500 functions (benchmark, not a
test): the world of ``tests/support/scale_world.py`` (10,000 queues, most idle) seeded into
a separate database (default ``gearman_hq_bench_overview``, created and migrated when
missing, its HQ tables emptied each run), then timed ``--runs`` times each:

- ``selectors.queues()``: the queue list the web tier computes once per
  ``HQ_SHARED_CACHE_S`` for every page and process (``shared_queues``),
- the whole page and its live fragment through Django's test client (the queue list
  included, as with the cache off), with the number of SQL queries and the bytes sent.

    .venv/bin/python bench/overview.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hq.settings")


def setup(database: str) -> None:
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", database],
                   capture_output=True)
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{database}"
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", default="gearman_hq_bench_overview")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    setup(args.database)
    from django.db import connection, reset_queries
    from django.test import Client
    from django.test.utils import setup_test_environment

    from hq.models import Role
    from monitoring import selectors
    from tests.support.scale_world import build_scale_world
    from tests.support.users import make_user

    setup_test_environment()  # the test client's response.context, and ALLOWED_HOSTS
    with connection.cursor() as cur:
        cur.execute("TRUNCATE jobs_server, auth_user CASCADE")
    t = time.perf_counter()
    build_scale_world()
    with connection.cursor() as cur:
        for table in ("monitoring_rollup", "monitoring_queuesnapshot", "jobs_job"):
            cur.execute(f"ANALYZE {table}")
    print(f"overview bench: 20 servers x 500 functions, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M')}; "
          f"seeded in {time.perf_counter() - t:.1f} s", flush=True)
    client = Client()
    client.force_login(make_user("bench-viewer", Role.VIEWER))
    client.get("/")  # warm the template cache and the plans

    def timed(fn):  # type: ignore[no-untyped-def]
        samples, out = [], None
        for _ in range(args.runs):
            reset_queries()
            t0 = time.perf_counter()
            out = fn()
            samples.append((time.perf_counter() - t0) * 1000)
        return samples, out, len(connection.queries)

    from django.conf import settings

    settings.DEBUG = True  # count queries
    rows: list[tuple[str, list[float], str]] = []
    samples, queues, n = timed(selectors.queues)
    rows.append(("selectors.queues() (shared by every page)", samples,
                 f"{len(queues):,} rows, {n} queries"))
    samples, page, n = timed(lambda: client.get("/"))
    shown = page.content.count(b'<tr class="queue-row')
    rows.append(("GET / (whole page)", samples, f"{len(page.content):,} bytes, {n} queries, "
                 f"{shown:,} queue rows"))
    samples, frag, n = timed(lambda: client.get("/", HTTP_HX_REQUEST="true"))
    rows.append(("GET / (live fragment)", samples, f"{len(frag.content):,} bytes, {n} queries"))
    samples, idle, n = timed(lambda: client.get("/", {"idle": "1"}, HTTP_HX_REQUEST="true"))
    rows.append(("GET /?idle=1 (fragment, idle unfolded)", samples,
                 f"{len(idle.content):,} bytes"))
    samples, filt, n = timed(lambda: client.get("/", {"q": "resize"}, HTTP_HX_REQUEST="true"))
    rows.append(("GET /?q=resize (fragment)", samples, f"{len(filt.content):,} bytes"))
    print()
    print(f"{'':<42} {'p50 ms':>8} {'p95 ms':>8}  notes")
    for name, s, note in rows:
        ordered = sorted(s)
        p95 = ordered[min(len(ordered) - 1, round(len(ordered) * 0.95) - 1)]
        print(f"{name:<42} {statistics.median(s):>8.1f} {p95:>8.1f}  {note}")


if __name__ == "__main__":
    main()
