"""Many servers in one HQ: 1, 2, 4 gearmand, each with its own capture tap, one Postgres.

For each count N in --servers (default 1,2,4), on this machine: N private gearmand, each
watched by its own tap started as an operator starts it beside a remote gearmand
(``hq-tap capture --server NAME``, the installed console script), all writing to one
private Postgres (and one Redis). Each gearmand gets --clients PHP clients submitting
--jobs background jobs as fast as they can (php-gearman ``doBackground``) to --workers PHP
workers, all gearmand at once. Measured per N:

  submitted/s  jobs over the time from the first submit until every queue is drained
  recorded/s   jobs over the time from the first submit until every job's row in Postgres
               says completed (the figure that matters: how much traffic HQ keeps up with)
  µs per job   CPU (user + system from /proc) of the taps, tcpdump, Postgres (every process
               of its cluster), Redis, and gearmand, over the same window, per job
  Postgres cores busy   Postgres's CPU seconds over that window (1.0 = one core all along)

Every job's row is checked: per function (one per gearmand and run), the number of distinct
payloads (each carries its client and sequence number) recorded completed, with the result
the worker returned (the payload echoed), must equal the jobs the clients had acknowledged.
CPU accounting as in bench/cost.py (its private services and /proc snapshots are reused).

    .venv/bin/python bench/scale.py                       # 1,2,4 servers, 10,000 jobs each
    .venv/bin/python bench/scale.py --servers 1,2,4,8 --jobs 20000 --reps 2

Needs root (the taps capture) and the hq-tap script beside this Python (pip install -e .).
A benchmark, not a test: it asserts nothing. On a machine with fewer cores than processes
the figures show where the CPU goes, not the limit of one Postgres.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # bench/ is a directory of scripts, not a package
    AdminConn,
    BenchError,
    Proc,
    ProcessSet,
    free_port,
    machine_info,
    median,
    process_set,
    raise_on_termination_signals,
    start_gearmand,
    wait_for_drain,
    wait_for_workers,
)
from cost import Measure, Roots, Services, cpu_delta, postmaster_pid, private_services
from tap import collect_clients, php, start_workers, wait_for_line

HOST = "127.0.0.1"
HQ_TAP = Path(sys.executable).with_name("hq-tap")
#: the table's columns of HQ's CPU per job (cost.py's roles; no proxy child in capture)
SHOWN = ("tap", "tcpdump", "postgres", "redis")


@dataclass
class Config:
    servers: list[int]
    jobs: int
    clients: int
    workers: int
    reps: int
    record_timeout_s: float
    json_path: Path | None


@dataclass
class Run(Measure):
    """N servers, once: bench/cost.py's measure (CPU per job by role, HQ / gearmand), with
    the jobs of N gearmand and the times of this bench."""

    servers: int = 1
    drained_s: float = 0.0  # first submit → every queue drained
    recorded_s: float = 0.0  # first submit → every row completed
    per_server: dict[str, int] = field(default_factory=dict)  # rows checked, by server

    @property
    def postgres_cores(self) -> float:
        """Postgres's CPU over the window: how many cores the one database kept busy."""
        return self.cpu_s.get("postgres", 0.0) / self.recorded_s if self.recorded_s else 0.0


@dataclass
class Server:
    name: str
    port: int
    function: str
    gearmand: Proc
    tap: Proc


# --------------------------------------------------------------------------- one run


def start_server(procs: ProcessSet, svc: Services, n: int, i: int) -> Server:
    """A gearmand and its capture tap (hq-tap, with only the environment a tap needs)."""
    port = free_port()
    gearmand = start_gearmand(procs, HOST, port)
    name = f"scale{n}-{i}-{secrets.token_hex(2)}"
    env = {"DATABASE_URL": svc.db_url, "REDIS_URL": svc.redis_url,
           "HQ_SPOOL_DIR": str(procs.workdir / "spool"), "PYTHONUNBUFFERED": "1"}
    argv = [str(HQ_TAP), "capture", "--interface", "lo", "--port", str(port), "--server", name]
    tap = procs.spawn(f"tap-{name}", argv, env=env, cwd=procs.workdir)
    wait_for_line(tap, "HQ capture ready", 60.0)
    return Server(name, port, f"scale_{name.replace('-', '_')}", gearmand, tap)


#: a job counts once its row is completed with the result the worker sent (the payload
#: echoed); distinct payloads, so a job recorded twice counts once
COUNT = ("SELECT function, count(DISTINCT payload_text) FILTER (WHERE state = 'completed'"
         " AND result_text = payload_text) FROM jobs_job WHERE function = ANY(%s)"
         " GROUP BY function")


def count_recorded(svc: Services, servers: Sequence[Server]) -> dict[str, int]:
    """function → distinct payloads recorded completed (over the uncounted probe)."""
    rows = svc.probe.execute(COUNT, ([s.function for s in servers],)).fetchall()
    return {str(f): int(n) for f, n in rows}


def wait_recorded(svc: Services, servers: Sequence[Server], want: int, timeout: float,
                  ) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = count_recorded(svc, servers)
        if sum(counts.values()) >= want or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def load(procs: ProcessSet, cfg: Config, servers: Sequence[Server]) -> list[Proc]:
    """--clients PHP clients per gearmand, each submitting its share of --jobs."""
    shares = [cfg.jobs // cfg.clients + (k < cfg.jobs % cfg.clients)
              for k in range(cfg.clients)]
    return [procs.spawn(f"client{k}-{s.name}",
                        php("client_bg.php", HOST, s.port, s.function, share, f"{s.name}.{k}"))
            for s in servers for k, share in enumerate(shares)]


def measure(procs: ProcessSet, cfg: Config, svc: Services, servers: Sequence[Server],
            run: Run) -> None:
    roots = [Roots(s.tap.pid, s.gearmand.pid, postmaster_pid(svc.pg), svc.redis.pid,
                   frozenset({svc.probe_pid})) for s in servers]
    with contextlib.ExitStack() as stack:
        admins = [stack.enter_context(AdminConn(HOST, s.port)) for s in servers]
        for s, admin in zip(servers, admins, strict=True):
            workers = start_workers(procs, s.port, s.function, cfg.workers)
            wait_for_workers(admin, s.function, cfg.workers, 15.0, workers)
        time.sleep(1.0)  # the taps' start-up work (first poll) outside the window
        before = {pid: v for r in roots for pid, v in r.snapshot().items()}
        started = time.monotonic()
        outputs = collect_clients(load(procs, cfg, servers))
        for s, admin in zip(servers, admins, strict=True):
            wait_for_drain(admin, s.function, 300.0, 0.005)
        run.drained_s = time.monotonic() - started
        run.ok = sum(o.ok for o in outputs)
        counts = wait_recorded(svc, servers, run.ok, cfg.record_timeout_s)
        run.recorded_s = time.monotonic() - started
        after = {pid: v for r in roots for pid, v in r.snapshot().items()}
    run.cpu_s = cpu_delta(before, after)
    run.loadavg = os.getloadavg()[0]
    run.per_server = {s.name: counts.get(s.function, 0) for s in servers}
    run.recorded = sum(run.per_server.values())
    want = run.ok // len(servers)
    short = {name: n for name, n in run.per_server.items() if n != want}
    if run.ok != run.jobs or short:
        run.error = (f"{run.ok} of {run.jobs} acknowledged; recorded completed per server: "
                     f"{run.per_server}")
    for s in servers:
        if not s.tap.alive():
            run.error = f"tap {s.name} exited (rc {s.tap.popen.returncode})"


def run_servers(cfg: Config, svc: Services, n: int, rep: int) -> Run:
    print(f"[rep {rep + 1}/{cfg.reps}] {n} gearmand, {n} taps", flush=True)
    run = Run("capture", "bg", rep, "", n * cfg.jobs, servers=n)
    with process_set() as procs:
        try:
            servers = [start_server(procs, svc, n, i) for i in range(n)]
            measure(procs, cfg, svc, servers, run)
        except BenchError as exc:
            run.error = str(exc)
    print_run(run)
    return run


# --------------------------------------------------------------------------- report


def print_run(r: Run) -> None:
    if r.error and not r.ok:
        print(f"  ERROR {r.error}", flush=True)
        return
    parts = "  ".join(f"{role} {r.per_job_us(role):.0f}" for role in (*SHOWN, "gearmand"))
    note = f"  ! {r.error}" if r.error else ""
    print(f"  {r.ok} jobs: drained in {r.drained_s:.2f} s ({r.ok / r.drained_s:.0f}/s), all "
          f"recorded in {r.recorded_s:.2f} s ({r.recorded / r.recorded_s:.0f}/s); µs/job: "
          f"{parts}; HQ {r.hq_us:.0f} = {r.ratio:.2f}× gearmand; Postgres "
          f"{r.postgres_cores:.2f} cores (load {r.loadavg:.1f}){note}",
          flush=True)


def table(cfg: Config, runs: Sequence[Run]) -> tuple[str, list[dict[str, Any]]]:
    """Medians over repetitions, one row per server count."""
    lines = ["| gearmand + taps | jobs | submitted/s | **recorded/s** | tap µs/job | tcpdump | "
             "Postgres | Redis | **HQ µs/job** | gearmand µs/job | HQ / gearmand | "
             "Postgres cores busy | rows checked |", "|---" * 13 + "|"]
    summary = []
    for n in cfg.servers:
        mine = [r for r in runs if r.servers == n]
        good = [r for r in mine if not r.error]
        checked = f"{sum(r.recorded for r in mine):,}/{sum(r.jobs for r in mine):,}"
        if not good:
            lines.append(f"| {n} | {n * cfg.jobs:,} |" + " – |" * 10 + f" {checked} |")
            continue

        def med(value: Any, rs: Sequence[Run] = good) -> float:
            return median([value(r) for r in rs])

        cells = [f"{med(lambda r: r.ok / r.drained_s):,.0f}",
                 f"**{med(lambda r: r.recorded / r.recorded_s):,.0f}**",
                 *(f"{med(lambda r, role=role: r.per_job_us(role)):,.0f}" for role in SHOWN),
                 f"**{med(lambda r: r.hq_us):,.0f}**",
                 f"{med(lambda r: r.per_job_us('gearmand')):,.0f}",
                 f"{med(lambda r: r.ratio):.2f}×",
                 f"{med(lambda r: r.postgres_cores):.2f}"]
        lines.append(f"| {n} | {n * cfg.jobs:,} | " + " | ".join(cells) + f" | {checked} |")
        summary.append({"servers": n, "runs": len(good),
                        "recorded_per_s": med(lambda r: r.recorded / r.recorded_s),
                        "hq_us": med(lambda r: r.hq_us),
                        "postgres_us": med(lambda r: r.per_job_us("postgres")),
                        "gearmand_us": med(lambda r: r.per_job_us("gearmand"))})
    return "\n".join(lines), summary


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="1,2,4", help="comma list of gearmand counts")
    p.add_argument("--jobs", type=int, default=10000, help="background jobs per gearmand")
    p.add_argument("--clients", type=int, default=1, help="PHP clients per gearmand")
    p.add_argument("--workers", type=int, default=1, help="PHP workers per gearmand")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--record-timeout", type=float, default=180.0,
                   help="seconds to wait for every job to be recorded")
    p.add_argument("--json", type=Path, dest="json_path", help="write raw figures here")
    a = p.parse_args(argv)
    try:
        servers = [int(x) for x in a.servers.split(",") if x.strip()]
    except ValueError:
        p.error(f"--servers takes whole numbers, got {a.servers!r}")
    if not servers or min(servers) < 1 or a.jobs < 1 or a.clients < 1 or a.workers < 1:
        p.error("--servers, --jobs, --clients and --workers must be at least 1")
    return Config(servers, a.jobs, a.clients, a.workers, a.reps, a.record_timeout,
                  a.json_path)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    if os.geteuid() != 0:
        print("! the taps capture (tcpdump): run as root")
        return 2
    if not HQ_TAP.exists():
        print(f"! {HQ_TAP} is missing: pip install -e . installs it")
        return 2
    raise_on_termination_signals()
    info = machine_info()
    started = time.monotonic()
    print(f"Gearman HQ scale bench — {info['date']}; {info['nproc']} cores ({info['cpu']}), "
          f"load average {info['loadavg']}; gearmand {info['gearmand']}; "
          f"php-gearman {info['php_gearman']}")
    print(f"  {cfg.jobs} background jobs per gearmand from {cfg.clients} client(s) to "
          f"{cfg.workers} worker(s) each; servers {cfg.servers}; {cfg.reps} rep(s)\n",
          flush=True)
    runs: list[Run] = []
    try:
        with private_services() as svc:
            for rep in range(cfg.reps):
                for n in cfg.servers:
                    runs.append(run_servers(cfg, svc, n, rep))
    except KeyboardInterrupt:
        print("\ninterrupted: everything started has been stopped; partial results:")
    except BenchError as exc:
        print(f"\n! {exc}")
    text, summary = table(cfg, runs)
    print(f"\n{text}\n")
    print(f"total bench time {time.monotonic() - started:.0f} s; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if cfg.json_path:
        cfg.json_path.parent.mkdir(parents=True, exist_ok=True)
        data = {"machine": info, "config": {**asdict(cfg), "json_path": str(cfg.json_path)},
                "runs": [asdict(r) for r in runs], "summary": summary}
        cfg.json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return 0 if runs and not any(r.error for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
