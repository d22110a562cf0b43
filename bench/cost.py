"""What does HQ spend, in CPU, to record one job, next to what gearmand spends running it?

Starts a Postgres and a Redis of its own (so every process of that cluster is HQ's), then
for each tap mode (capture, proxy): a private gearmand, the tap (`manage.py
gearman_capture` / `gearman_proxy`, as `make run` starts it), and for each workload PHP
clients (php-gearman) submitting as fast as they can to PHP workers:

  bg   background jobs (doBackground) from --clients clients to --workers workers
  fg   foreground jobs (doNormal) from --fg-clients sequential clients

CPU seconds (user + system, from /proc/<pid>/stat; children reaped inside the window
included) are read for every process before the first submit and again once every job is
recorded in Postgres (state completed, counted per run's unique function name), and split
by process: the tap and its children (in proxy mode the forwarding process and its decoding
child), tcpdump, the Postgres cluster (postmaster, backends, WAL writer, checkpointer,
autovacuum), Redis, and gearmand itself. Before the second reading the job table's GIN
pending lists are merged (the deferred part of the search index's insert; `--no-settle`
leaves it to autovacuum, whose timing then decides which run pays it). Printed per job in
µs, with HQ's total over gearmand's (the target of issue 13 is ≤ 1.0×). The web tier and
Celery are not started here: they take no part in recording a job.

    .venv/bin/python bench/cost.py                         # capture+proxy, bg+fg, 25k jobs
    .venv/bin/python bench/cost.py --modes capture --kinds bg --jobs 20000 --reps 2
    .venv/bin/python bench/cost.py --json var/bench-cost.json

Needs root for capture mode (tcpdump). A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # bench/ is a directory of scripts, not a package
    PROJECT_DIR,
    AdminConn,
    BenchError,
    PrivatePostgres,
    Proc,
    ProcessSet,
    command_line,
    descendants,
    free_port,
    machine_info,
    median,
    prepare_database,
    process_set,
    raise_on_termination_signals,
    start_gearmand,
    start_redis,
    wait_for_drain,
    wait_for_port,
    wait_for_workers,
)
from tap import collect_clients, php, start_workers

HOST = "127.0.0.1"
MODES = ("capture", "proxy")
KINDS = ("bg", "fg")
READY = {"capture": "HQ capture ready", "proxy": "watching gearmand"}
#: the rows of the table, in order; HQ's total is the sum of HQ_ROLES. "tap" is the tap
#: command's process (in proxy mode: the forwarding), "tap child" the proxy's decoding
#: child (parser, tracker, writer).
ROLES = ("tap", "tap child", "tcpdump", "postgres", "redis", "gearmand")
HQ_ROLES = ("tap", "tap child", "tcpdump", "postgres", "redis")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Config:
    modes: list[str]
    kinds: list[str]
    jobs: int
    clients: int
    workers: int
    fg_clients: int
    reps: int
    record_timeout_s: float
    json_path: Path | None
    keep_logs: Path | None
    tap_env: dict[str, str]
    py_spy: Path | None = None
    setup_sql: tuple[str, ...] = ()
    pg_stats: bool = False
    settle: bool = True


@dataclass
class Measure:
    """One workload in one mode: CPU seconds per process role over the window."""

    mode: str
    kind: str
    rep: int
    function: str
    jobs: int
    ok: int = 0
    wall_s: float = 0.0
    record_s: float = 0.0  # from the last job done in gearmand to the last job recorded
    settle_s: float = 0.0  # merging the GIN pending lists the workload left (see settle)
    recorded: int = 0
    completed: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)
    loadavg: float = 0.0
    error: str | None = None

    def per_job_us(self, role: str) -> float:
        return self.cpu_s.get(role, 0.0) / max(self.ok, 1) * 1e6

    @property
    def hq_us(self) -> float:
        return sum(self.per_job_us(r) for r in HQ_ROLES)

    @property
    def ratio(self) -> float:
        gm = self.per_job_us("gearmand")
        return self.hq_us / gm if gm else float("nan")


# --------------------------------------------------------------------------- /proc


def _stat(pid: int) -> tuple[str, int] | None:
    """(command name, CPU ticks of the process and of its reaped children)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text.rsplit(")", 1)[1].split()
    return name, sum(int(x) for x in fields[11:15])  # utime stime cutime cstime


@dataclass
class Roots:
    """The processes whose CPU is counted, by role (each with its descendants)."""

    tap: int
    gearmand: int
    postmaster: int
    redis: int
    #: processes not counted: the bench's own Postgres backend (it polls for the rows)
    exclude: frozenset[int] = frozenset()

    def snapshot(self) -> dict[int, tuple[str, int]]:
        """pid → (role, CPU ticks) of every process of every role, now."""
        out: dict[int, tuple[str, int]] = {}
        for role, root in (("gearmand", self.gearmand), ("postgres", self.postmaster),
                           ("redis", self.redis), ("tap", self.tap)):
            for pid in (root, *descendants(root)):
                if pid in self.exclude:
                    continue
                stat = _stat(pid)
                if stat is None:
                    continue
                name, ticks = stat
                if role == "tap" and name == "tcpdump":
                    role_of = "tcpdump"
                elif role == "tap" and pid != root and "hq.tap.child" in command_line(pid):
                    role_of = "tap child"
                else:
                    role_of = role
                out[pid] = (role_of, ticks)
        return out


def cpu_delta(before: dict[int, tuple[str, int]],
              after: dict[int, tuple[str, int]]) -> dict[str, float]:
    """CPU seconds per role between two snapshots (a process started meanwhile counts
    whole; one that ended was reaped into its parent's cutime/cstime)."""
    out = dict.fromkeys(ROLES, 0.0)
    for pid, (role, ticks) in after.items():
        was = before.get(pid)
        out[role] += (ticks - (was[1] if was else 0)) / TICKS
    return out


# --------------------------------------------------------------------------- services


@dataclass
class Services:
    pg: PrivatePostgres
    db_url: str
    redis: Proc
    redis_url: str
    procs: ProcessSet
    probe: Any  # the bench's own connection (psycopg), whose backend is not counted
    probe_pid: int


def postmaster_pid(pg: PrivatePostgres) -> int:
    return int((pg.data / "postmaster.pid").read_text().split()[0])


@contextlib.contextmanager
def private_services(setup_sql: Sequence[str] = (), *, pg_stats: bool = False,
                     ) -> Iterator[Services]:
    with contextlib.ExitStack() as stack:
        pg = PrivatePostgres()
        stack.callback(pg.destroy)
        pg.init()
        if pg_stats:
            with (pg.data / "postgresql.conf").open("a") as conf:
                conf.write("shared_preload_libraries = 'pg_stat_statements'\n"
                           "pg_stat_statements.track = all\n")
        pg.start()
        db_url = pg.url("gearman_hq_cost")
        print(f"private Postgres on 127.0.0.1:{pg.port}; migrating", flush=True)
        prepare_database(db_url, migrate=True)
        run_sql(db_url, [*setup_sql, *(
            ["CREATE EXTENSION IF NOT EXISTS pg_stat_statements"] if pg_stats else [])])
        procs = stack.enter_context(process_set())
        port = free_port()
        redis = start_redis(procs, port)
        import psycopg

        probe = stack.enter_context(psycopg.connect(db_url, autocommit=True))
        backend = probe.execute("SELECT pg_backend_pid()").fetchone()
        assert backend is not None
        yield Services(pg, db_url, redis, f"redis://127.0.0.1:{port}/0", procs, probe,
                       int(backend[0]))


def run_sql(db_url: str, statements: Sequence[str]) -> None:
    """--sql: statements run once after migrating, e.g. to measure an index's share."""
    if not statements:
        return
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        for statement in statements:
            print(f"  setup: {statement}", flush=True)
            conn.execute(statement.encode())


def pg_report(db_url: str) -> str:
    """--pg-stats: where Postgres spent its time (statements) and the rows each table got."""
    import psycopg

    lines = ["Postgres, whole run: statements by total time (ms, calls, rows)"]
    with psycopg.connect(db_url, autocommit=True) as conn:
        for total, calls, rows, query in conn.execute(
                "SELECT total_exec_time + total_plan_time, calls, rows, query"
                " FROM pg_stat_statements ORDER BY 1 DESC LIMIT 12"):
            text = " ".join(str(query).split())[:110]
            lines.append(f"  {total:10.0f} {calls:7d} {rows:9d}  {text}")
        lines.append("tables: inserted, updated (HOT), deleted rows")
        for name, ins, upd, hot, dele in conn.execute(
                "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del"
                " FROM pg_stat_user_tables WHERE n_tup_ins + n_tup_upd > 0"
                " ORDER BY n_tup_ins + n_tup_upd DESC LIMIT 8"):
            lines.append(f"  {name:32} {ins:9d} {upd:9d} ({hot}) {dele:9d}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- one mode


def tap_argv(mode: str, gport: int, cport: int, server: str) -> list[str]:
    py = [sys.executable, "manage.py"]
    if mode == "capture":
        return [*py, "gearman_capture", "--interface", "lo", "--port", str(gport),
                "--server", server]
    return [*py, "gearman_proxy", "--listen", f"{HOST}:{cport}", "--upstream",
            f"{HOST}:{gport}", "--server", server]


def start_tap(procs: ProcessSet, cfg: Config, svc: Services, mode: str, gport: int,
              cport: int, server: str) -> Proc:
    env = {"DATABASE_URL": svc.db_url, "REDIS_URL": svc.redis_url,
           "HQ_SPOOL_DIR": str(procs.workdir / "spool"), "HQ_LOG_LEVEL": "INFO",
           "PYTHONUNBUFFERED": "1", **cfg.tap_env}
    argv = tap_argv(mode, gport, cport, server)
    tap = procs.spawn(f"tap-{mode}", argv, env=env, cwd=PROJECT_DIR)
    deadline = time.monotonic() + 60
    while READY[mode] not in tap.output(200_000):
        if not tap.alive():
            raise BenchError(f"the tap exited at start ({tap.popen.returncode}):\n"
                             f"{tap.output(3000)}")
        if time.monotonic() > deadline:
            raise BenchError(f"the tap is not ready after 60 s:\n{tap.output(3000)}")
        time.sleep(0.05)
    if mode == "proxy":
        wait_for_port(HOST, cport, 30.0, tap)
    time.sleep(1.0)  # let start-up work (Django, first poll) finish outside the window
    return tap


def profile(procs: ProcessSet, where: Path, tap: Proc, name: str) -> Proc:
    """Sample the tap (and its children) with py-spy, in a process group of its own so its
    CPU is not counted as the tap's; collapsed stacks go to ``where/name.txt``."""
    where.mkdir(parents=True, exist_ok=True)
    argv = [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(tap.pid),
            "--subprocesses", "--nonblocking", "--rate", "200", "--format", "raw",
            "--output", str(where / f"{name}.txt")]
    spy = procs.spawn(f"py-spy-{name}", argv)
    time.sleep(1.0)
    return spy


COUNT_JOBS = ("SELECT count(*), count(*) FILTER (WHERE state = 'completed') FROM jobs_job"
              " WHERE function = %s")


def wait_recorded(svc: Services, m: Measure, timeout: float) -> None:
    """Poll (over the bench's own connection, whose CPU is not counted) until every job
    of the workload is recorded completed."""
    deadline = time.monotonic() + timeout
    while True:
        row = svc.probe.execute(COUNT_JOBS, (m.function,)).fetchone()
        m.recorded, m.completed = int(row[0]), int(row[1])
        if m.completed >= m.ok or time.monotonic() > deadline:
            return
        time.sleep(0.2)


#: the job table's GIN indexes: an insert only appends to their pending list, merged later
#: (by autovacuum, or the insert that fills the list): work a job costs that may or may
#: not fall inside the window
GIN_INDEXES = ("SELECT i.indexrelid::regclass::text FROM pg_index i"
               " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam"
               " WHERE i.indrelid = 'jobs_job'::regclass AND a.amname = 'gin'")


def settle(svc: Services) -> float:
    """Merge the GIN pending lists now, over a connection whose backend is counted as
    Postgres's, so every run pays its own index work in its window (without it, a run
    paid it or not depending on when autovacuum woke up)."""
    import psycopg

    started = time.monotonic()
    with psycopg.connect(svc.db_url, autocommit=True) as conn:
        for (name,) in conn.execute(GIN_INDEXES).fetchall():
            conn.execute("SELECT gin_clean_pending_list(%s::regclass)", (name,))
    return time.monotonic() - started


def run_workload(procs: ProcessSet, cfg: Config, svc: Services, roots: Roots, m: Measure,
                 ports: tuple[int, int]) -> None:
    cport, gport = ports
    workers = start_workers(procs, cport, m.function, cfg.workers)
    with AdminConn(HOST, gport) as admin:
        wait_for_workers(admin, m.function, cfg.workers, 15.0, workers)
        n = cfg.clients if m.kind == "bg" else cfg.fg_clients
        shares = [m.jobs // n + (i < m.jobs % n) for i in range(n)]
        before = roots.snapshot()
        started = time.monotonic()
        if m.kind == "bg":
            argv = [php("client_bg.php", HOST, cport, m.function, k, i)
                    for i, k in enumerate(shares)]
        else:
            argv = [php("client_fg.php", HOST, cport, m.function, k) for k in shares]
        clients = [procs.spawn(f"{m.kind}{i}-{m.function}", a) for i, a in enumerate(argv)]
        outputs = collect_clients(clients)
        wait_for_drain(admin, m.function, 300.0, 0.005)
    done = time.monotonic()
    m.ok = sum(o.ok for o in outputs)
    m.wall_s = done - started
    wait_recorded(svc, m, cfg.record_timeout_s)
    m.record_s = time.monotonic() - done
    if cfg.settle:
        m.settle_s = settle(svc)
    after = roots.snapshot()
    m.cpu_s = cpu_delta(before, after)
    m.loadavg = os.getloadavg()[0]
    for worker in workers:
        procs.stop(worker)
    if m.completed < m.jobs:
        m.error = f"{m.completed} of {m.jobs} jobs recorded completed ({m.recorded} rows)"


def run_mode(cfg: Config, svc: Services, mode: str, rep: int) -> list[Measure]:
    print(f"[rep {rep + 1}/{cfg.reps}] {mode}", flush=True)
    results: list[Measure] = []
    with process_set() as procs:
        try:
            gport = free_port()
            cport = free_port() if mode == "proxy" else gport
            gearmand = start_gearmand(procs, HOST, gport)
            server = f"cost{mode[0]}{secrets.token_hex(3)}"
            tap = start_tap(procs, cfg, svc, mode, gport, cport, server)
            roots = Roots(tap.pid, gearmand.pid, postmaster_pid(svc.pg), svc.redis.pid,
                          frozenset({svc.probe_pid}))
            spy = None if cfg.py_spy is None else profile(procs, cfg.py_spy, tap, server)
            for kind in cfg.kinds:
                m = Measure(mode, kind, rep, f"cost_{kind}_{mode}_{secrets.token_hex(4)}",
                            cfg.jobs)
                try:
                    run_workload(procs, cfg, svc, roots, m, (cport, gport))
                except BenchError as exc:
                    m.error = str(exc)
                print_measure(m)
                results.append(m)
            if spy is not None:
                procs.stop(spy, timeout=30, sig=signal.SIGINT)  # py-spy writes on SIGINT
            if not tap.alive():
                for m in results:
                    m.error = m.error or f"the tap exited (rc {tap.popen.returncode})"
        except BenchError as exc:
            print(f"! {mode}: {exc}", flush=True)
        finally:
            if cfg.keep_logs is not None:
                keep_logs(procs, cfg.keep_logs / f"{mode}-{rep}")
    return results


def keep_logs(procs: ProcessSet, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for log in procs.workdir.glob("*.log"):
        if "tap-" in log.name:
            (target / log.name).write_bytes(log.read_bytes())


# --------------------------------------------------------------------------- report


def print_measure(m: Measure) -> None:
    if m.error and not m.ok:
        print(f"  {m.kind}: ERROR {m.error}", flush=True)
        return
    parts = "  ".join(f"{r} {m.per_job_us(r):.0f}" for r in ROLES)
    note = f"  ! {m.error}" if m.error else ""
    print(f"  {m.kind}: {m.ok} jobs in {m.wall_s:.2f} s ({m.ok / m.wall_s:.0f}/s), recorded "
          f"{m.completed} (+{m.record_s:.1f} s, merge {m.settle_s:.1f} s); µs/job: {parts}; "
          f"HQ {m.hq_us:.0f} = {m.ratio:.2f}× gearmand (load {m.loadavg:.1f}){note}", flush=True)


def table(cfg: Config, results: Sequence[Measure]) -> tuple[str, list[dict[str, Any]]]:
    """Medians over repetitions, one column per mode and kind."""
    columns = [(mode, kind) for mode in cfg.modes for kind in cfg.kinds]
    good = {c: [m for m in results if (m.mode, m.kind) == c and not m.error]
            for c in columns}
    head = "| CPU per job (µs) | " + " | ".join(f"{m} {k}" for m, k in columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]

    def row(label: str, value: Any) -> None:
        cells = []
        for c in columns:
            ms = good[c]
            cells.append(f"{median([value(m) for m in ms]):,.0f}" if ms else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("jobs/s (submit → drained)", lambda m: m.ok / m.wall_s)
    for role in HQ_ROLES:
        row(role, lambda m, r=role: m.per_job_us(r))
    row("**HQ total**", lambda m: m.hq_us)
    row("gearmand (baseline)", lambda m: m.per_job_us("gearmand"))
    cells = []
    for c in columns:
        ms = good[c]
        if ms:
            ratios = [m.ratio for m in ms]
            spread = f" [{min(ratios):.2f}–{max(ratios):.2f}]" if len(ms) > 1 else ""
            cells.append(f"**{median(ratios):.2f}×**{spread}")
        else:
            cells.append("–")
    lines.append("| **HQ / gearmand** | " + " | ".join(cells) + " |")
    counts = []
    for c in columns:
        ms = [m for m in results if (m.mode, m.kind) == c]
        counts.append(f"{sum(m.completed for m in ms)}/{sum(m.jobs for m in ms)}")
    lines.append("| recorded (completed/submitted) | " + " | ".join(counts) + " |")
    summary = [{"mode": c[0], "kind": c[1], "runs": len(good[c]),
                **({"hq_us": median([m.hq_us for m in good[c]]),
                    "gearmand_us": median([m.per_job_us("gearmand") for m in good[c]]),
                    "ratio": median([m.ratio for m in good[c]])} if good[c] else {})}
               for c in columns]
    return "\n".join(lines), summary


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default=",".join(MODES), help="comma list of capture,proxy")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma list of bg,fg")
    p.add_argument("--jobs", type=int, default=25000, help="jobs per workload")
    p.add_argument("--clients", type=int, default=1, help="background submitting clients")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--fg-clients", type=int, default=4, help="foreground clients")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--record-timeout", type=float, default=120.0,
                   help="seconds to wait for every job to be recorded")
    p.add_argument("--tap-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for the tap (repeatable)")
    p.add_argument("--json", type=Path, dest="json_path", help="write raw figures here")
    p.add_argument("--keep-logs", type=Path, help="copy the taps' logs under this directory")
    p.add_argument("--py-spy", type=Path, metavar="DIR",
                   help="sample each tap with py-spy (collapsed stacks into DIR)")
    p.add_argument("--sql", action="append", default=[], metavar="STATEMENT",
                   help="run on the private database after migrating (repeatable), e.g. "
                        "'DROP INDEX job_search_trgm' to measure what that index costs")
    p.add_argument("--pg-stats", action="store_true",
                   help="load pg_stat_statements and print where Postgres spent its time")
    p.add_argument("--no-settle", dest="settle", action="store_false",
                   help="do not merge the job table's GIN pending lists at the end of each "
                        "workload (figures before 2026-11-29 15:00 were taken without it)")
    a = p.parse_args(argv)
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    if unknown := (set(modes) - set(MODES)) | (set(kinds) - set(KINDS)):
        p.error(f"unknown modes or kinds: {', '.join(sorted(unknown))}")
    tap_env = dict(item.split("=", 1) for item in a.tap_env)
    return Config(modes, kinds, a.jobs, a.clients, a.workers, a.fg_clients, a.reps,
                  a.record_timeout, a.json_path, a.keep_logs, tap_env, a.py_spy,
                  tuple(a.sql), a.pg_stats, a.settle)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    if "capture" in cfg.modes and os.geteuid() != 0:
        print("! capture mode needs root (tcpdump): run as root or --modes proxy")
        return 2
    raise_on_termination_signals()
    info = machine_info()
    started = time.monotonic()
    print(f"Gearman HQ cost bench — {info['date']}; {info['nproc']} cores ({info['cpu']}), "
          f"load average {info['loadavg']}; gearmand {info['gearmand']}; "
          f"php-gearman {info['php_gearman']}")
    print(f"  {cfg.jobs} jobs per workload; bg: {cfg.clients} client(s), fg: "
          f"{cfg.fg_clients} client(s); {cfg.workers} workers; {cfg.reps} rep(s)\n", flush=True)
    results: list[Measure] = []
    try:
        with private_services(cfg.setup_sql, pg_stats=cfg.pg_stats) as svc:
            for rep in range(cfg.reps):
                for mode in cfg.modes:
                    results.extend(run_mode(cfg, svc, mode, rep))
            if cfg.pg_stats:
                print(f"\n{pg_report(svc.db_url)}")
    except KeyboardInterrupt:
        print("\ninterrupted: everything started has been stopped; partial results:")
    except BenchError as exc:
        print(f"\n! {exc}")
    text, summary = table(cfg, results)
    print(f"\n{text}\n")
    print(f"total bench time {time.monotonic() - started:.0f} s; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if cfg.json_path:
        cfg.json_path.parent.mkdir(parents=True, exist_ok=True)
        data = {"machine": info, "config": {**asdict(cfg), "json_path": str(cfg.json_path),
                                            "keep_logs": str(cfg.keep_logs),
                                            "py_spy": str(cfg.py_spy)},
                "results": [asdict(m) for m in results], "summary": summary}
        cfg.json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return 0 if results and not any(m.error for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
