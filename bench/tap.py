"""What does HQ's tap cost gearmand's users?

Runs real PHP clients and workers (php-gearman) against a private gearmand in three modes,
interleaved and repeated, in one run:

  bare     clients → gearmand
  capture  clients → gearmand, with `manage.py gearman_capture` watching the port
  proxy    clients → `manage.py gearman_proxy` → gearmand

Workloads: background throughput with 1 and 4 submitting clients and 2 workers (wall time
until gearmand's `status` shows the function drained), and foreground latency (one
sequential doNormal() client, one worker). Prints a table per workload with the median
over repetitions and the ratio against `bare` from the same run; for tap modes also how many
jobs HQ recorded in Postgres (`jobs_job`) for each run's unique function name.

    .venv/bin/python bench/tap.py                      # all modes, ~2-3 min
    .venv/bin/python bench/tap.py --modes bare --quick # ~30 s smoke run
    .venv/bin/python bench/tap.py --json var/bench-tap.json

This is a benchmark, not a test: it asserts nothing about times.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # bench/ is a directory of scripts, not a package
    PHP_DIR,
    PROJECT_DIR,
    AdminConn,
    BenchError,
    Proc,
    ProcessSet,
    count_jobs,
    free_port,
    group_cpu_seconds,
    machine_info,
    median,
    percentile,
    prepare_database,
    process_set,
    raise_on_termination_signals,
    start_gearmand,
    wait_exit,
    wait_for_drain,
    wait_for_port,
    wait_for_workers,
)

# How each tap mode is started. Placeholders: {python} {port} (gearmand) {proxy_port}
# {host} {server} {interface}. Override with --capture-cmd / --proxy-cmd.
TAP_COMMANDS: dict[str, str] = {
    "capture": (
        "{python} manage.py gearman_capture --interface {interface} --port {port} --server {server}"
    ),
    "proxy": (
        "{python} manage.py gearman_proxy --listen {host}:{proxy_port}"
        " --upstream {host}:{port} --server {server}"
    ),
}
MODES = ("bare", "capture", "proxy")
#: what the capture tap prints once tcpdump listens
READY = {"capture": "HQ capture ready"}
DEFAULT_DB_URL = "postgres://postgres@127.0.0.1:5432/gearman_hq_bench"
HOST = "127.0.0.1"
CLIENT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # "bg" | "fg"
    clients: int
    workers: int
    jobs: int  # in total, over all clients


@dataclass
class Config:
    modes: list[str]
    reps: int
    workloads: list[Workload]
    db_url: str
    tap_commands: dict[str, str]
    server: str
    interface: str
    tap_warmup_s: float
    tap_stop_timeout_s: float
    poll_s: float
    gearmand_threads: int
    migrate: bool
    json_path: Path | None


@dataclass
class Result:
    """One workload in one run of one mode."""

    mode: str
    rep: int
    workload: str
    function: str
    jobs: int
    ok: int = 0
    failed: int = 0
    wall_s: float = 0.0
    jobs_per_s: float = 0.0
    p50_us: float = float("nan")
    p99_us: float = float("nan")
    start_from: str = "php"  # where the bg wall time starts: first PHP hrtime() or spawn
    recorded: int | None = None
    completed: int | None = None
    error: str | None = None


@dataclass
class ModeRun:
    mode: str
    rep: int
    results: list[Result] = field(default_factory=list)
    tap_cpu_s: float | None = None
    tap_output: str = ""
    db_note: str = ""
    error: str | None = None


# --------------------------------------------------------------------------- PHP clients


@dataclass
class ClientOutput:
    start_ns: int
    end_ns: int
    ok: int
    failed: int
    latencies_ns: list[int]


def parse_client_output(text: str, name: str) -> ClientOutput:
    """Parse "start NS" / one latency per line / "end NS OK FAILED" from a PHP client."""
    lines = text.split()
    try:
        start_at = lines.index("start")
        end_at = lines.index("end", start_at)
        start_ns = int(lines[start_at + 1])
        latencies = [int(x) for x in lines[start_at + 2 : end_at]]
        end_ns, ok, failed = (int(x) for x in lines[end_at + 1 : end_at + 4])
    except (ValueError, IndexError) as exc:
        raise BenchError(f"{name}: unreadable output: {text[-2000:]!r}") from exc
    return ClientOutput(start_ns, end_ns, ok, failed, latencies)


def php(script: str, *args: object) -> list[str]:
    return ["php", str(PHP_DIR / script), *(str(a) for a in args)]


def start_workers(procs: ProcessSet, port: int, function: str, count: int) -> list[Proc]:
    return [
        procs.spawn(f"worker{i}-{function}", php("worker.php", HOST, port, function))
        for i in range(count)
    ]


def collect_clients(clients: Sequence[Proc]) -> list[ClientOutput]:
    for client in clients:
        wait_exit(client, CLIENT_TIMEOUT_S)
    return [parse_client_output(c.output(10**8), c.name) for c in clients]


def fill_latency(result: Result, outputs: Sequence[ClientOutput]) -> None:
    latencies = [ns / 1000 for out in outputs for ns in out.latencies_ns]
    result.ok = sum(out.ok for out in outputs)
    result.failed = sum(out.failed for out in outputs)
    result.p50_us = percentile(latencies, 50)
    result.p99_us = percentile(latencies, 99)
    if result.failed:
        result.error = f"{result.failed} of {result.jobs} jobs failed"


# --------------------------------------------------------------------------- workloads


def run_bg(
    procs: ProcessSet, cfg: Config, wl: Workload, result: Result, ports: tuple[int, int]
) -> None:
    """Background throughput: wall time from the first submit until the queue is drained."""
    client_port, admin_port = ports
    workers = start_workers(procs, client_port, result.function, wl.workers)
    with AdminConn(HOST, admin_port) as admin:
        wait_for_workers(admin, result.function, wl.workers, 15.0, workers)
        shares = [wl.jobs // wl.clients + (i < wl.jobs % wl.clients) for i in range(wl.clients)]
        spawned_ns = time.monotonic_ns()
        clients = [
            procs.spawn(
                f"bg{i}-{result.function}",
                php("client_bg.php", HOST, client_port, result.function, n, i),
            )
            for i, n in enumerate(shares)
        ]
        outputs = collect_clients(clients)
        done_ns = wait_for_drain(admin, result.function, CLIENT_TIMEOUT_S, cfg.poll_s)
    for worker in workers:
        procs.stop(worker)
    # hrtime() and time.monotonic_ns() share CLOCK_MONOTONIC; fall back to the spawn time
    first_ns = min(out.start_ns for out in outputs)
    start_ns = first_ns if spawned_ns <= first_ns < done_ns else spawned_ns
    result.start_from = "php" if start_ns == first_ns else "spawn"
    fill_latency(result, outputs)
    result.wall_s = (done_ns - start_ns) / 1e9
    result.jobs_per_s = result.ok / result.wall_s


def run_fg(
    procs: ProcessSet, cfg: Config, wl: Workload, result: Result, ports: tuple[int, int]
) -> None:
    """Foreground latency: one sequential client, round trip per job measured in PHP."""
    client_port, admin_port = ports
    workers = start_workers(procs, client_port, result.function, wl.workers)
    with AdminConn(HOST, admin_port) as admin:
        wait_for_workers(admin, result.function, wl.workers, 15.0, workers)
    client = procs.spawn(
        f"fg-{result.function}", php("client_fg.php", HOST, client_port, result.function, wl.jobs)
    )
    (output,) = collect_clients([client])
    for worker in workers:
        procs.stop(worker)
    fill_latency(result, [output])
    result.wall_s = (output.end_ns - output.start_ns) / 1e9
    result.jobs_per_s = result.ok / result.wall_s


def run_workload(
    procs: ProcessSet, cfg: Config, wl: Workload, run: ModeRun, ports: tuple[int, int]
) -> Result:
    tag = secrets.token_hex(4)
    function = f"bench_{wl.name.replace('-', '')}_{run.mode}_{tag}"
    result = Result(mode=run.mode, rep=run.rep, workload=wl.name, function=function, jobs=wl.jobs)
    try:
        (run_bg if wl.kind == "bg" else run_fg)(procs, cfg, wl, result, ports)
    except BenchError as exc:
        result.error = str(exc)
    print_result(result)
    return result


# --------------------------------------------------------------------------- taps


def tap_argv(cfg: Config, mode: str, port: int, proxy_port: int) -> list[str]:
    template = cfg.tap_commands[mode]
    return [
        part.format(
            python=sys.executable,
            port=port,
            proxy_port=proxy_port,
            host=HOST,
            server=cfg.server,
            interface=cfg.interface,
        )
        for part in shlex.split(template)
    ]


def start_tap(procs: ProcessSet, cfg: Config, mode: str, port: int) -> tuple[Proc, int]:
    """Start the tap for mode; return it and the port clients should use."""
    proxy_port = free_port() if mode == "proxy" else port
    argv = tap_argv(cfg, mode, port, proxy_port)
    print(f"  starting {mode}: {shlex.join(argv)}", flush=True)
    tap = procs.spawn(mode, argv, env={"DATABASE_URL": cfg.db_url}, cwd=PROJECT_DIR)
    if mode == "proxy":
        wait_for_port(HOST, proxy_port, 30.0, tap)
    else:
        # tcpdump must listen before the first client connects, or the jobs sent before
        # it did are never seen (on a loaded machine Django alone can take over 2 s)
        wait_for_line(tap, READY[mode], 60.0)
    deadline = time.monotonic() + cfg.tap_warmup_s
    while time.monotonic() < deadline:
        if not tap.alive():
            raise BenchError(
                f"{mode} exited at start (rc {tap.popen.returncode}):\n{tap.output(3000)}"
            )
        time.sleep(0.05)
    return tap, proxy_port


def wait_for_line(tap: Proc, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in tap.output(200_000):
        if not tap.alive():
            raise BenchError(f"the tap exited at start (rc {tap.popen.returncode}):\n"
                             f"{tap.output(3000)}")
        if time.monotonic() > deadline:
            raise BenchError(f"no {text!r} from the tap after {timeout:.0f} s")
        time.sleep(0.05)


def stop_tap(procs: ProcessSet, cfg: Config, tap: Proc, run: ModeRun) -> None:
    if not tap.alive():
        run.error = f"{run.mode} exited during the run (rc {tap.popen.returncode})"
    run.tap_cpu_s = group_cpu_seconds(tap.pid)
    rc = procs.stop(tap, timeout=cfg.tap_stop_timeout_s)
    run.tap_output = tap.log_path.read_text(errors="replace")[-20_000:]
    tail = "\n".join(run.tap_output.strip().splitlines()[-15:])
    print(f"  {run.mode} stopped (rc {rc}, {run.tap_cpu_s:.2f} CPU s); its last lines:")
    print("    " + tail.replace("\n", "\n    "), flush=True)


# --------------------------------------------------------------------------- Postgres


def count_recorded(db_url: str, results: Sequence[Result]) -> str:
    """Fill recorded/completed from jobs_job; return '' or why the figures are n/a."""
    counts = count_jobs(db_url, [r.function for r in results])
    if isinstance(counts, str):
        return counts
    for result in results:
        result.recorded, result.completed = counts.get(result.function, (0, 0))
    return ""


# --------------------------------------------------------------------------- one mode run


def run_mode(cfg: Config, mode: str, rep: int) -> ModeRun:
    run = ModeRun(mode=mode, rep=rep)
    print(f"[rep {rep + 1}/{cfg.reps}] {mode}", flush=True)
    with process_set() as procs:
        try:
            run_mode_in(procs, cfg, run)
        except BenchError as exc:
            run.error = str(exc)
            print(f"! {mode} (rep {rep + 1}) failed: {exc}", flush=True)
    return run


def run_mode_in(procs: ProcessSet, cfg: Config, run: ModeRun) -> None:
    port = free_port()
    start_gearmand(procs, HOST, port, cfg.gearmand_threads)
    tap: Proc | None = None
    client_port = port
    if run.mode != "bare":
        tap, client_port = start_tap(procs, cfg, run.mode, port)
    for wl in cfg.workloads:
        run.results.append(run_workload(procs, cfg, wl, run, (client_port, port)))
    if tap is not None:
        stop_tap(procs, cfg, tap, run)
        run.db_note = count_recorded(cfg.db_url, run.results)
        for result in run.results:
            print(f"  {result.workload}: recorded {_recorded(result, run.db_note)}")


# --------------------------------------------------------------------------- report


def _recorded(result: Result, note: str) -> str:
    if result.recorded is None:
        return note or "n/a"
    return f"{result.recorded}/{result.ok} ({result.completed} completed)"


def print_result(r: Result) -> None:
    if r.error and not r.ok:
        print(f"  {r.workload}: ERROR {r.error}", flush=True)
        return
    note = f"  ! {r.error}" if r.error else ""
    print(
        f"  {r.workload}: {r.jobs_per_s:8.0f} jobs/s  wall {r.wall_s:6.2f} s"
        f"  p50 {r.p50_us:6.0f} µs  p99 {r.p99_us:6.0f} µs{note}",
        flush=True,
    )


@dataclass
class Summary:
    mode: str
    runs: int
    jobs_per_s: float
    p50_us: float
    p99_us: float
    recorded: str


def summarise(runs: Sequence[ModeRun], mode: str, workload: str) -> Summary | None:
    pairs = [
        (run, r)
        for run in runs
        if run.mode == mode
        for r in run.results
        if r.workload == workload and r.ok and not r.error and not run.error
    ]
    if not pairs:
        return None
    results = [r for _, r in pairs]
    recorded = "-"
    if mode != "bare":
        notes = {run.db_note for run, _ in pairs}
        if any(r.recorded is None for r in results):
            recorded = next(iter(n for n in notes if n), "n/a")
        else:
            total = sum(r.recorded or 0 for r in results)
            done = sum(r.completed or 0 for r in results)
            recorded = f"{total}/{sum(r.ok for r in results)} ({done} completed)"
    return Summary(
        mode=mode,
        runs=len(results),
        jobs_per_s=median([r.jobs_per_s for r in results]),
        p50_us=median([r.p50_us for r in results]),
        p99_us=median([r.p99_us for r in results]),
        recorded=recorded,
    )


def print_table(cfg: Config, runs: Sequence[ModeRun], wl: Workload) -> list[dict[str, Any]]:
    what = "submit round trip" if wl.kind == "bg" else "doNormal round trip"
    print(
        f"\n{wl.name}: {wl.jobs} {'background' if wl.kind == 'bg' else 'foreground'} jobs,"
        f" {wl.clients} client(s), {wl.workers} worker(s); latency = {what}"
    )
    header = ("mode", "runs", "jobs/s", "vs bare", "p50 µs", "p99 µs", "+p50 µs", "recorded/run")
    print("{:<8} {:>4} {:>9} {:>7} {:>8} {:>8} {:>8}  {}".format(*header))
    summaries = [s for m in cfg.modes if (s := summarise(runs, m, wl.name)) is not None]
    base = next((s for s in summaries if s.mode == "bare"), None)
    rows = []
    for s in summaries:
        ratio = f"{s.jobs_per_s / base.jobs_per_s:.2f}" if base else "-"
        added = f"{s.p50_us - base.p50_us:+.0f}" if base else "-"
        print(
            f"{s.mode:<8} {s.runs:>4} {s.jobs_per_s:>9.0f} {ratio:>7} {s.p50_us:>8.0f}"
            f" {s.p99_us:>8.0f} {added:>8}  {s.recorded}"
        )
        rows.append(
            {**asdict(s), "workload": wl.name, "ratio_vs_bare": ratio, "added_p50_us": added}
        )
    for mode in cfg.modes:
        if all(s.mode != mode for s in summaries):
            print(f"{mode:<8}    0   (no successful run)")
    return rows


def print_header(cfg: Config, info: dict[str, Any]) -> None:
    print("Gearman HQ tap bench —", info["date"])
    for key in ("host", "nproc", "cpu", "loadavg", "kernel", "gearmand", "php", "php_gearman"):
        print(f"  {key:<12} {info[key]}")
    wls = ", ".join(f"{w.name}={w.jobs}" for w in cfg.workloads)
    print(
        f"  modes        {','.join(cfg.modes)} x {cfg.reps} reps (interleaved); {wls}\n", flush=True
    )


def write_json(
    path: Path,
    cfg: Config,
    info: dict[str, Any],
    runs: Sequence[ModeRun],
    summary: list[dict[str, Any]],
) -> None:
    data = {
        "machine": info,
        "config": {**asdict(cfg), "json_path": str(cfg.json_path)},
        "runs": [asdict(run) for run in runs],
        "summary": summary,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"\nraw figures written to {path}")


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default=",".join(MODES), help="comma list of bare,capture,proxy")
    p.add_argument("--reps", type=int, help="repetitions of each mode (default 2, quick 1)")
    p.add_argument("--bg-jobs", type=int, help="background jobs per client count (20000)")
    p.add_argument("--fg-jobs", type=int, help="foreground jobs (5000)")
    p.add_argument("--clients", default="1,4", help="background client counts (1,4)")
    p.add_argument("--bg-workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="small smoke run (~30 s)")
    p.add_argument("--json", type=Path, dest="json_path", help="write raw figures here")
    p.add_argument("--database-url", default=DEFAULT_DB_URL, help="DATABASE_URL for the taps")
    p.add_argument("--no-migrate", action="store_true", help="do not run manage.py migrate")
    p.add_argument("--capture-cmd", default=TAP_COMMANDS["capture"])
    p.add_argument("--proxy-cmd", default=TAP_COMMANDS["proxy"])
    p.add_argument("--server", default="bench", help="--server name passed to the taps")
    p.add_argument("--interface", default="lo")
    p.add_argument("--tap-warmup", type=float, default=2.0, help="seconds after tap start")
    p.add_argument("--tap-stop-timeout", type=float, default=60.0)
    p.add_argument("--poll", type=float, default=0.002, help="status poll interval, s")
    p.add_argument("--gearmand-threads", type=int, default=4)
    a = p.parse_args(argv)
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if unknown := set(modes) - set(MODES):
        p.error(f"unknown modes: {', '.join(sorted(unknown))}")
    return Config(
        modes=modes,
        reps=a.reps or (1 if a.quick else 2),
        workloads=build_workloads(a),
        db_url=a.database_url,
        tap_commands={"capture": a.capture_cmd, "proxy": a.proxy_cmd},
        server=a.server,
        interface=a.interface,
        tap_warmup_s=a.tap_warmup,
        tap_stop_timeout_s=a.tap_stop_timeout,
        poll_s=a.poll,
        gearmand_threads=a.gearmand_threads,
        migrate=not a.no_migrate,
        json_path=a.json_path,
    )


def build_workloads(a: argparse.Namespace) -> list[Workload]:
    bg_jobs = a.bg_jobs or (4000 if a.quick else 20000)
    fg_jobs = a.fg_jobs or (1000 if a.quick else 5000)
    workloads = [
        Workload(f"bg-{n}", "bg", int(n), a.bg_workers, bg_jobs)
        for n in a.clients.split(",")
        if n.strip()
    ]
    workloads.append(Workload("fg", "fg", 1, 1, fg_jobs))
    return workloads


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    raise_on_termination_signals()
    info = machine_info()
    print_header(cfg, info)
    if any(m != "bare" for m in cfg.modes):
        prepare_database(cfg.db_url, migrate=cfg.migrate)
    runs: list[ModeRun] = []
    started = time.monotonic()
    try:
        for rep in range(cfg.reps):
            for mode in cfg.modes:
                runs.append(run_mode(cfg, mode, rep))
    except KeyboardInterrupt:
        print("\ninterrupted: every process started has been stopped; partial figures:")
    summary = [row for wl in cfg.workloads for row in print_table(cfg, runs, wl)]
    print(f"\ntotal bench time {time.monotonic() - started:.0f} s")
    if cfg.json_path:
        write_json(cfg.json_path, cfg, info, runs, summary)
    return 0 if runs and all(r.error is None for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
