"""What each index and constraint of the job table costs an inserted row, in Postgres CPU.

A micro-benchmark beside ``bench/cost.py`` (which measures whole recordings, with the
machine's noise): for each variant it creates a scratch copy of ``jobs_job`` (columns and
defaults, the primary key and the (boot, handle) unique index), adds the job table's
btrees and the variant's index or constraints, inserts ``--rows`` rows shaped like
bench/cost.py's jobs (a handle, a UUID unique key as libgearman sends, a ~90-byte JSON
payload; ``--big``: ~4.6 KB of hex words instead) in batches of 1,600 as the writer does,
merges the GIN pending list, and reads the backend's CPU time from ``/proc`` (so it must run
on the database's host). Prints the median µs per row over ``--reps``.

    .venv/bin/python bench/job_indexes.py [--rows 50000] [--reps 3] [--big] [VARIANT ...]

The database (default ``gearman_hq_job_indexes``) is created and migrated if missing.
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

UUID = "^[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}$"
GIN = "CREATE INDEX {t}_trgm ON {t} USING gin (({expr}) gin_trgm_ops) WITH ({opts})"
PENDING = "gin_pending_list_limit = 32768"
OLD_TEXT = ("handle || ' ' || \"unique\" || ' ' || function || ' ' "
            "|| coalesce(left(payload_text, 4096), '')")
NEW_TEXT = (f"function || ' ' || CASE WHEN \"unique\" ~* '{UUID}' THEN '' ELSE \"unique\" END"
            " || ' ' || coalesce(left(payload_text, 512), '')")
VARIANTS: dict[str, list[str]] = {
    "btrees": [],
    "no-btrees": [],
    "trgm-0002": [GIN.format(t="{t}", expr=OLD_TEXT, opts=PENDING)],
    "trgm-0013": [GIN.format(t="{t}", expr=NEW_TEXT, opts=PENDING)],
    "trgm-0002-no-fastupdate": [GIN.format(t="{t}", expr=OLD_TEXT, opts="fastupdate = off")],
    "fk-server-boot": [
        "ALTER TABLE {t} ADD FOREIGN KEY (server_id) REFERENCES jobs_server (id)"
        " DEFERRABLE INITIALLY DEFERRED",
        "ALTER TABLE {t} ADD FOREIGN KEY (boot_id) REFERENCES jobs_boot (id)"
        " DEFERRABLE INITIALLY DEFERRED"],
}
for n in (256, 512, 1024, 4096):
    VARIANTS[f"payload-{n}"] = [GIN.format(t="{t}", expr=f"left(payload_text, {n})",
                                           opts=PENDING)]
BTREES = ['CREATE INDEX ON {t} (handle)', 'CREATE INDEX ON {t} ("unique")',
          "CREATE INDEX ON {t} (submitted_at)", "CREATE INDEX ON {t} (finished_at)",
          "CREATE INDEX ON {t} (function, id DESC)", "CREATE INDEX ON {t} (worker, id DESC)",
          "CREATE INDEX ON {t} (state, id DESC)",
          "CREATE INDEX ON {t} (function, state, id DESC)"]
SMALL = """'{"client":"1","seq":' || i || ',"kind":"bench","pad":"' || repeat('x', 48)
    || '"}'"""
BIG = "(SELECT string_agg(md5((i * 1000 + k)::text), ' ') FROM generate_series(1, 140) k)"
INSERT = """INSERT INTO {t} (server_id, boot_id, handle, function, "unique", priority,
    background, state, submitted_at, started_at, finished_at, wait_ms, runtime_ms, attempts,
    worker, payload_text, payload_size, result_size, error, clients, updated_at, dead,
    death_count, recovery)
SELECT %(server)s, %(boot)s, 'H:python-svc:' || i, 'cost_bg_4f2a', gen_random_uuid()::text,
    'normal', true, 'completed', now(), now(), now(), 1, 1, 1, 'worker-' || (i %% 2),
    {payload}, 90, 0, '', 0, now(), false, 0, ''
FROM generate_series(%(start)s::int, %(stop)s::int) i"""
BATCH = 1600


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(url: str, variant: str, rows: int, big: bool, ids: tuple[int, int]) -> float:
    import psycopg

    t = "bench_job_" + variant.replace("-", "_")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {t}")
        conn.execute(f"CREATE TABLE {t} (LIKE jobs_job INCLUDING DEFAULTS INCLUDING IDENTITY)")
        conn.execute(f"ALTER TABLE {t} ADD PRIMARY KEY (id)")
        conn.execute(f"CREATE UNIQUE INDEX ON {t} (boot_id, handle)")
        for statement in ([] if variant == "no-btrees" else BTREES) + VARIANTS[variant]:
            conn.execute(statement.format(t=t).encode())
        pid = conn.info.backend_pid
        insert = INSERT.format(t=t, payload=BIG if big else SMALL).encode()
        before = cpu_s(pid)
        for start in range(0, rows, BATCH):
            with conn.transaction():
                conn.execute(insert, {"server": ids[0], "boot": ids[1], "start": start,
                                      "stop": min(start + BATCH, rows) - 1})
        if "trgm" in variant or variant.startswith("payload"):
            conn.execute(f"SELECT gin_clean_pending_list('{t}_trgm'::regclass)".encode())
        used = cpu_s(pid) - before
        conn.execute(f"DROP TABLE {t}")
    return used / rows * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="*", default=["btrees", "trgm-0002", "trgm-0013",
                                                        "fk-server-boot"])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--big", action="store_true", help="~4.6 KB text payloads")
    parser.add_argument("--database", default="gearman_hq_job_indexes")
    args = parser.parse_args()
    if unknown := set(args.variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", args.database],
                   capture_output=True, check=False)
    url = f"postgres://postgres@127.0.0.1:5432/{args.database}"
    os.environ["DATABASE_URL"] = url
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    from django.utils import timezone

    from jobs.models import Boot, Server

    server, _ = Server.objects.get_or_create(name="bench-indexes")
    boot, _ = Boot.objects.get_or_create(server=server, token="1",
                                         defaults={"first_seen": timezone.now()})
    print(f"job-row index costs: {args.rows:,} rows x {args.reps}, "
          f"{'~4.6 KB' if args.big else '~90-byte'} payloads, {time.strftime('%Y-%m-%d %H:%M')}")
    samples: dict[str, list[float]] = {v: [] for v in args.variants}
    for _ in range(args.reps):  # interleaved
        for variant in args.variants:
            samples[variant].append(one(url, variant, args.rows, args.big, (server.id, boot.id)))
    for variant, values in samples.items():
        spread = " ".join(f"{v:.1f}" for v in sorted(values))
        print(f"  {variant:<26} {statistics.median(values):7.1f} µs a row  [{spread}]")


if __name__ == "__main__":
    main()
