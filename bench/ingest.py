"""How fast does an event become a row? (benchmark, not a test)

Phase 1, throughput: N synthetic jobs, 4 lifecycle events each (submitted, started, status,
completed — what the tracker emits for a typical job), pushed through the real EventWriter
(COPY to staging, idempotent insert into the partitioned event table, fold, job upsert) as
fast as it takes them. Baseline in the same run: a bare COPY of the same event rows into an
unindexed table with no fold and no upsert — the floor the writer's extra work sits on.

Phase 2, lag: events emitted at a steady rate with the writer thread running as in the tap;
for sampled jobs, the time from the event's timestamp until its job is visible, completed,
through the same query the search uses (``jobs.selectors.search_jobs``, handle filter).

    .venv/bin/python bench/ingest.py [--jobs 100000] [--rate 20000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hq.settings")
BENCH_DB = "gearman_hq_bench"


def setup_django(database_url: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import prepare_database

    prepare_database(database_url, migrate=False)  # creates it when missing
    os.environ["DATABASE_URL"] = database_url
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def make_events(n_jobs: int, start_handle: int, t0: float) -> list:
    from broker.tracker import Event

    events = []
    payload = b'{"order": 4711, "path": "/uploads/000123.jpg", "sizes": [64, 256, 1024]}'
    for i in range(start_handle, start_handle + n_jobs):
        handle = f"H:bench:{i}"
        ts = t0 + i * 1e-5
        events += [
            Event("submitted", "1", handle, ts, "10.0.0.1:5000", function=f"fn_{i % 20}",
                  unique=f"u-{i}", priority="normal", background=True, data=payload,
                  size=len(payload)),
            Event("started", "1", handle, ts + 0.001, "10.0.0.2:6000", function=f"fn_{i % 20}",
                  worker="w-1", data=payload, size=len(payload)),
            Event("status", "1", handle, ts + 0.002, "10.0.0.2:6000", numerator=1,
                  denominator=2),
            Event("completed", "1", handle, ts + 0.003, "10.0.0.2:6000", worker="w-1",
                  data=b"ok", size=2),
        ]
    return events


def writer(server: str, spool: Path, batch: int):  # type: ignore[no-untyped-def]
    from jobs.ingest import EventWriter, conninfo_from_settings

    return EventWriter(server, conninfo_from_settings(), spool_dir=spool, batch=batch,
                       flush_ms=50)


def throughput(n_jobs: int, batch: int, spool: Path) -> dict[str, float]:
    events = make_events(n_jobs, 1, time.time())
    w = writer(f"bench-{time.time_ns()}", spool, batch)
    for ev in events:
        w.emit(ev)
    started = time.perf_counter()
    w.flush()
    elapsed = time.perf_counter() - started
    assert w.counters["events_written"] == len(events), w.counters
    return {"events": len(events), "seconds": elapsed, "events_per_s": len(events) / elapsed}


def baseline_copy(n_jobs: int, batch: int) -> dict[str, float]:
    import psycopg
    from psycopg import sql

    from jobs.columns import column_list
    from jobs.ingest import conninfo_from_settings
    from jobs.models import JobEvent
    from jobs.store import EVENT_COLUMNS, event_values

    events = make_events(n_jobs, 1, time.time())
    w = writer("baseline-rows", Path(tempfile.mkdtemp()), batch)
    rows = w._rows(events)  # the same Python row building the writer does
    bare = sql.Identifier("bench_bare_events")
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(bare, column_list(EVENT_COLUMNS))
    with psycopg.connect(conninfo_from_settings()) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(bare))
        conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(
            bare, sql.Identifier(JobEvent._meta.db_table)))
        conn.commit()
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            with conn.cursor() as cur, cur.copy(copy_sql) as copy:
                for r in rows[i:i + batch]:
                    copy.write_row((1, 1, *event_values(r)))  # server_id, boot_id first
            conn.commit()
        elapsed = time.perf_counter() - started
        conn.execute(sql.SQL("DROP TABLE {}").format(bare))
    return {"events": len(rows), "seconds": elapsed, "events_per_s": len(rows) / elapsed}


def lag(rate: int, seconds: float, spool: Path) -> dict[str, float]:
    from jobs.selectors import search_jobs

    server = f"lag-{time.time_ns()}"
    w = writer(server, spool, 5000)
    w.start()
    jobs_per_s = rate / 4
    total = int(jobs_per_s * seconds)
    samples: list[float] = []
    pending: queue.Queue[tuple[str, float] | None] = queue.Queue()

    def prober() -> None:
        """One thread, samples in emission order (they become visible in that order):
        a poll loop per sample would starve the writer of the GIL it measures."""
        while (item := pending.get()) is not None:
            handle, emitted = item
            while not search_jobs({"handle": handle, "server": server,
                                   "state": "completed"}).exists():
                time.sleep(0.002)
            samples.append(time.time() - emitted)

    probe_thread = threading.Thread(target=prober)
    probe_thread.start()
    handle_no = 0
    started = time.perf_counter()
    while handle_no < total:
        due = int((time.perf_counter() - started) * jobs_per_s)
        while handle_no < min(due, total):
            handle_no += 1
            now = time.time()
            for ev in make_events(1, handle_no, now - 0.003):
                w.emit(ev)
            if handle_no % max(1, int(jobs_per_s // 10)) == 0:  # ~10 samples a second
                pending.put((f"H:bench:{handle_no}", now))
        time.sleep(0.001)
    pending.put(None)
    probe_thread.join(120)
    w.stop()
    samples.sort()
    return {"rate": rate, "samples": len(samples),
            "p50_ms": 1000 * statistics.median(samples) if samples else float("nan"),
            "p95_ms": 1000 * samples[int(len(samples) * 0.95) - 1] if samples else float("nan"),
            "max_ms": 1000 * samples[-1] if samples else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--rate", type=int, default=20_000, help="events/s in the lag phase")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--database-url",
                        default=f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}")
    args = parser.parse_args()

    import subprocess

    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", BENCH_DB],
                   capture_output=True)
    setup_django(args.database_url)
    spool = Path(tempfile.mkdtemp(prefix="hq-bench-spool-"))
    print(f"ingest bench: {args.jobs} jobs x 4 events, batch {args.batch}, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
    base = baseline_copy(args.jobs, args.batch)
    full = throughput(args.jobs, args.batch, spool)
    print()
    print(f"{'path':<46} {'events':>9} {'seconds':>8} {'events/s':>10} {'ratio':>6}")
    for name, r in (("bare COPY into an unindexed table (baseline)", base),
                    ("EventWriter: events + fold + job upsert", full)):
        print(f"{name:<46} {r['events']:>9} {r['seconds']:>8.2f} "
              f"{r['events_per_s']:>10,.0f} {r['events_per_s'] / base['events_per_s']:>6.2f}")
    result = lag(args.rate, args.seconds, spool)
    print()
    print(f"lag at {result['rate']:,} events/s ({result['samples']} sampled jobs): event → "
          f"visible in search p50 {result['p50_ms']:.0f} ms, p95 {result['p95_ms']:.0f} ms, "
          f"max {result['max_ms']:.0f} ms")


if __name__ == "__main__":
    main()
