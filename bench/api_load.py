"""The REST API under parallel scripts (benchmark, not a test).

Seeds a database the way a busy HQ looks (jobs whose handles recur over 8 gearmand boots,
200 queues with snapshots and rollups, 50 workers), starts the web server the way
`make run` does, and points `wrk` (Debian's package) at the endpoints scripts call most,
with C concurrent keep-alive clients for S seconds each:

- ``/healthz`` — the floor: what the server does for a request that does nearly nothing
- ``/api/v1/jobs/?handle=…`` — find by handle (a random one of the seeded handles)
- ``/api/v1/jobs/?function=…&limit=50`` — a job list
- ``/api/v1/queues/`` and ``/api/v1/workers/``

It prints req/s, p50/p95/p99 and failures (socket errors and non-2xx) per endpoint, each
endpoint's throughput as a ratio of the ``/healthz`` floor measured in the same run, the
web server's own CPU per request (all its processes, from /proc: the figure that the
other load of a shared machine disturbs least), and how many Postgres connections the web
tier held during and after the run.

    .venv/bin/python bench/api_load.py [--clients 16 --clients 64] [--seconds 10]
        [--server hq.serve|asgi|daphne] [--database-url postgres://…/hq_bench_api]

``hq.serve`` is the server as ``make run`` starts it (granian WSGI workers for HTTP, the
websocket server beside it on a port of its own); ``asgi`` is the server before that (two
gunicorn + uvicorn workers running hq.asgi for HTTP too), kept to measure against.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BenchError,
    ProcessSet,
    free_port,
    group_cpu_seconds,
    machine_info,
    prepare_database,
    process_set,
    wait_for_port,
)

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
HANDLES = 5000
BOOTS = 8
FUNCTIONS = 200
ENDPOINTS = [
    ("/healthz (floor)", "/healthz"),
    ("jobs by handle", "/api/v1/jobs/?handle=H:bench:{handle}"),
    ("jobs by function", "/api/v1/jobs/?function=fn_7&limit=50"),
    ("queues", "/api/v1/queues/"),
    ("workers", "/api/v1/workers/"),
]

SEED = """
WITH s AS (SELECT id FROM jobs_server WHERE name = 'bench-api')
INSERT INTO jobs_job (server_id, boot_id, handle, function, "unique", priority, background,
    state, submitted_at, started_at, finished_at, wait_ms, runtime_ms, attempts, worker,
    payload_text, payload_size, result_text, result_size, error, clients, updated_at)
SELECT s.id, b.id, 'H:bench:' || i, 'fn_' || (i %% 200), 'u-' || i, 'normal', true,
    CASE WHEN i %% 47 = 0 THEN 'failed' ELSE 'completed' END, now() - i * interval '1 s',
    now() - i * interval '1 s', now(), 20, 100, 1, 'worker-' || (i %% 50),
    '{"order": ' || i || '}', 14, 'ok', 2, '', 1, now()
FROM s, jobs_boot b, generate_series(1, %(handles)s) AS i
WHERE b.server_id = s.id
"""
SEED_MONITORING = """
WITH s AS (SELECT id FROM jobs_server WHERE name = 'bench-api')
INSERT INTO monitoring_queuesnapshot (server_id, function, at, total, running, workers)
SELECT s.id, 'fn_' || f, now() - p * interval '5 seconds', (f * 7 + p) %% 90, 2, 3
FROM s, generate_series(0, 199) f, generate_series(0, 29) p;
WITH s AS (SELECT id FROM jobs_server WHERE name = 'bench-api')
INSERT INTO monitoring_rollup (server_id, function, minute, submitted, completed, failed,
    runtime_hist, wait_hist)
SELECT s.id, 'fn_' || f, date_trunc('minute', now()) - m * interval '1 minute', 60, 58, 2,
    '[0, 0, 0, 1, 2, 4, 8, 10, 12, 10, 6, 3, 1, 1]'::jsonb, '[0, 3, 9, 20, 18, 6, 2]'::jsonb
FROM s, generate_series(0, 199) f, generate_series(0, 59) m;
WITH s AS (SELECT id FROM jobs_server WHERE name = 'bench-api')
INSERT INTO monitoring_worker (server_id, fd, address, client_id, functions, connected_at,
    last_seen)
SELECT s.id, 100 + w, '10.0.0.' || w, 'worker-' || w, '["fn_1", "fn_2"]'::jsonb, now(), now()
FROM s, generate_series(0, 49) w;
"""


@dataclass
class Row:
    name: str
    clients: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    failed: int
    requests: int
    cpu_ms: float  # the web server's CPU (all its processes) per request


def seed(db_url: str) -> None:
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM jobs_server WHERE name = 'bench-api'").fetchone():
            print("seed: already there")
            return
        started = time.monotonic()
        sid = conn.execute("INSERT INTO jobs_server (name, address, created_at) "
                           "VALUES ('bench-api', '127.0.0.1:4730', now()) RETURNING id"
                           ).fetchone()[0]  # type: ignore[index]
        for n in range(BOOTS):
            conn.execute("INSERT INTO jobs_boot (server_id, token, first_seen) "
                         "VALUES (%s, %s, now())", (sid, str(1000 + n)))
        conn.execute(SEED, {"handles": HANDLES})
        conn.execute(SEED_MONITORING.replace("%%", "%"))
        conn.execute("INSERT INTO monitoring_serverstate (server_id, up, version, pid, "
                     "started_at, polled_at, failed_polls, last_error) "
                     "VALUES (%s, true, '1.1.20', '1000', now(), now(), 0, '')", (sid,))
        conn.execute("ANALYZE")
        print(f"seed: {HANDLES * BOOTS:,} jobs ({HANDLES:,} handles x {BOOTS} boots), "
              f"{FUNCTIONS} queues, 50 workers in {time.monotonic() - started:.1f} s")


def env_for(db_url: str) -> dict[str, str]:
    # HQ_API_RATE lifted (not off: the limit's Redis round trip is still paid): one token
    # makes every request here, and the table is about the server, not the limit
    return {"HQ_API_RATE": "1000000000", **os.environ, "DATABASE_URL": db_url,
            "HQ_SECRET_KEY": "bench-only-secret-key-not-for-production-0123456789",
            "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "hq.settings",
            "HQ_LOG_LEVEL": "WARNING"}


def token(db_url: str) -> str:
    out = subprocess.run([PY, "manage.py", "hq_token", "--user", "bench-script", "--role",
                          "viewer"], cwd=ROOT, env=env_for(db_url), capture_output=True,
                         text=True, check=True, timeout=60)
    return out.stdout.strip().splitlines()[-1]


def server_argv(kind: str, port: int, ws_port: int) -> list[str]:
    """The server's command line: HTTP on ``port``, websockets on ``ws_port`` (the same
    port but for hq.serve)."""
    venv = Path(PY).parent
    if kind == "daphne":
        return [str(venv / "daphne"), "-b", "127.0.0.1", "-p", str(port), "hq.asgi:application"]
    if kind == "asgi":  # the websocket half of hq.serve, serving HTTP with 2 workers
        return [PY, "-m", "hq.serve", "ws", "--ws-bind", f"127.0.0.1:{port}",
                "--ws-workers", "2"]
    return [PY, "-m", "hq.serve", "--bind", f"127.0.0.1:{port}",
            "--ws-bind", f"127.0.0.1:{ws_port}"]


def psycopg_error() -> type[Exception]:
    import psycopg

    return psycopg.OperationalError


def connections(db_url: str) -> int:
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                           "current_database() AND pid <> pg_backend_pid()").fetchone()
        return int(row[0]) if row else 0


class PeakConnections:
    """Samples the database's connection count while the load runs."""

    def __init__(self, db_url: str) -> None:
        self.db_url, self.peak, self._stop = db_url, 0, threading.Event()
        self.full = False  # the sampler itself found Postgres out of connections
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakConnections:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        import psycopg

        while not self._stop.wait(0.5):
            try:
                self.peak = max(self.peak, connections(self.db_url))
            except psycopg.OperationalError:  # "too many clients": Postgres is full
                self.full = True


def run_wrk(url: str, clients: int, seconds: int, tok: str) -> dict[str, int]:
    env = {**os.environ, "WRK_TOKEN": tok, "WRK_HANDLES": str(HANDLES)}
    threads = max(1, min(2, clients))
    argv = ["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{seconds}s", "--timeout",
            "10s", "-s", str(Path(__file__).parent / "wrk" / "report.lua"), url]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("{")), None)
    if line is None:
        raise BenchError(f"wrk printed no result: {out.stdout[-500:]} {out.stderr[-500:]}")
    return json.loads(line)  # type: ignore[no-any-return]


def warm_up(base: str, tok: str) -> None:
    """A second of load on each endpoint first: imports, URL patterns, the pools' first
    connections and the first shared-cache fill are not what the table is about."""
    for _name, path in ENDPOINTS:
        run_wrk(base + path, 4, 1, tok)


def measure(base: str, clients: int, seconds: int, tok: str, pgid: int,
            only: Sequence[str] = ()) -> list[Row]:
    rows = []
    for name, path in ENDPOINTS:
        if only and not name.startswith("/healthz") and not any(o in name for o in only):
            continue
        cpu = group_cpu_seconds(pgid)
        r = run_wrk(base + path, clients, seconds, tok)
        cpu = group_cpu_seconds(pgid) - cpu
        failed = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
        rows.append(Row(name, clients, r["requests"] / (r["duration_us"] / 1e6),
                        r["p50_us"] / 1000, r["p95_us"] / 1000, r["p99_us"] / 1000, failed,
                        r["requests"], cpu * 1000 / max(r["requests"], 1)))
        print(f"  {name:<20} c={clients:<3} {rows[-1].rps:8.0f} req/s  "
              f"p95 {rows[-1].p95_ms:7.1f} ms  failed {failed}", flush=True)
    return rows


def print_table(rows: Sequence[Row], kind: str) -> None:
    print(f"\n## {kind}: REST API under parallel keep-alive clients\n")
    print("| endpoint | clients | req/s | × floor | p50 ms | p95 ms | p99 ms | failed / requests "
          "| web CPU ms/req |")
    print("|---|---|---|---|---|---|---|---|---|")
    floors = {r.clients: r.rps for r in rows if r.name.startswith("/healthz")}
    for r in rows:
        ratio = r.rps / floors[r.clients] if floors.get(r.clients) else float("nan")
        print(f"| {r.name} | {r.clients} | {r.rps:,.0f} | {ratio:.2f} | {r.p50_ms:.1f} | "
              f"{r.p95_ms:.1f} | {r.p99_ms:.1f} | {r.failed:,} / {r.requests:,} | "
              f"{r.cpu_ms:.2f} |")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url",
                   default="postgres://postgres@127.0.0.1:5432/hq_bench_api")
    p.add_argument("--server", choices=["hq.serve", "asgi", "daphne"], default="hq.serve",
                   help="hq.serve: as make run starts it; asgi: gunicorn + uvicorn for HTTP "
                        "too (the server before); daphne: the one before that")
    p.add_argument("--clients", type=int, action="append",
                   help="concurrent keep-alive clients (repeatable; default 16 and 64)")
    p.add_argument("--seconds", type=int, default=10, help="per endpoint and client count")
    p.add_argument("--only", action="append", default=[],
                   help="only the endpoints whose name contains this (repeatable; the "
                        "/healthz floor always runs), e.g. --only handle")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk (make bench installs it)")
        return 2
    info = machine_info()
    print(f"# bench/api_load.py  {info.get('cpu', '')}  {info.get('cores', '')} cores  "
          f"server={args.server}")
    prepare_database(args.database_url, migrate=True)
    seed(args.database_url)
    tok = token(args.database_url)
    rows: list[Row] = []
    with process_set() as procs:
        port, _ws_port = start_server(procs, args.server, args.database_url)
        pgid = procs.procs[-1].pid  # the server leads its own process group
        base = f"http://127.0.0.1:{port}"
        warm_up(base, tok)
        for clients in args.clients or [16, 64]:
            with PeakConnections(args.database_url) as peak:
                rows += measure(base, clients, args.seconds, tok, pgid, args.only)
            full = " (and Postgres refused more: too many clients)" if peak.full else ""
            print(f"  Postgres connections during the {clients}-client runs: "
                  f"at most {peak.peak}{full}")
        time.sleep(2)
        try:
            after = str(connections(args.database_url))
        except psycopg_error() as exc:  # Postgres still full: the figure is "all of them"
            after = f"Postgres refused this sampler too ({str(exc).strip()[-40:]})"
        print(f"  Postgres connections 2 s after the load, server still up: {after}")
    print_table(rows, args.server)
    return 0 if all(r.failed == 0 for r in rows) else 1


def start_server(procs: ProcessSet, kind: str, db_url: str) -> tuple[int, int]:
    """Starts the server; (its HTTP port, its websocket port)."""
    port = free_port()
    ws_port = free_port() if kind == "hq.serve" else port
    proc = procs.spawn(f"web-{kind}", server_argv(kind, port, ws_port), env=env_for(db_url),
                       cwd=ROOT)
    wait_for_port("127.0.0.1", port, 60, proc)
    wait_for_port("127.0.0.1", ws_port, 60, proc)
    return port, ws_port


if __name__ == "__main__":
    sys.exit(main())
